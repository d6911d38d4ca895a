"""Multi-LoRA serving: adapters read from PEFT folders, held in host memory and device slots,
chosen per request and mixed in every step (see layers/lora.py for the math)."""

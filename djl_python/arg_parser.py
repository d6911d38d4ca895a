"""Command-line flags of `python -m djl_python.test_model` (DJL's djl-test-model)."""

import argparse


class ArgParser:
    @staticmethod
    def test_model_args() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="djl-test-model",
                                         description="Run a DJL handler once, without a server")
        parser.add_argument("--model-dir", dest="model_dir", type=str,
                            help="model directory (holds model.py and serving.properties)")
        parser.add_argument("--entry-point", dest="entry_point", type=str, default="model.py",
                            help="the handler file in the model directory, or a module name")
        parser.add_argument("--handler", dest="handler", type=str, default="handle",
                            help="the function of the entry point to call")
        parser.add_argument("--input", dest="input", type=str, nargs="+", default=["input.txt"],
                            help="input files or literal text, each optionally KEY=VALUE")
        parser.add_argument("--parameters", dest="parameters", type=str, nargs="+",
                            help="request properties as KEY=VALUE")
        return parser

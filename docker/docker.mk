# Container image targets (included by the Makefile).
#   make docker-build-cpu   CPU image serve:cpu (podman where it is installed, else docker)
#   make docker-build       CUDA image serve:gpu (BASE_IMAGE=... to change the CUDA base)
#   make docker-test        install podman if needed, build the CPU image, run it, call it
#   make docker-test-cuda   build the CUDA image, run it without a GPU, check it (not in make test)
#   make docker-deps        apt-get install podman, runc, debootstrap (root; skipped if present)
#   make docker-run-cpu     serve the embedded SmolLM2 from the CPU image on $(PORT)
#   make docker-clean       remove the serve:* images and dangling layers
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGE_CPU ?= serve:cpu
IMAGE_GPU ?= serve:gpu
BASE_IMAGE ?=
PODMAN_RUN := --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768

.PHONY: docker-deps docker-build docker-build-cpu docker-test docker-test-cuda docker-run-cpu \
  docker-clean

# Where podman cannot be installed (no root, no apt), the container test skips and says why.
docker-deps:
	@docker/install-podman.sh || echo "docker-deps: podman not installed;" \
	  "tests/test_container_image.py will skip" >&2

docker-build-cpu:
	CONTAINER_ENGINE=$(CONTAINER_ENGINE) docker/build-image.sh --file docker/Dockerfile.cpu \
	  --tag $(IMAGE_CPU) $(if $(BASE_IMAGE),--base $(BASE_IMAGE))

BUILD_GPU = CONTAINER_ENGINE=$(CONTAINER_ENGINE) docker/build-image.sh --file docker/Dockerfile \
  --tag $(IMAGE_GPU) $(if $(BASE_IMAGE),--base $(BASE_IMAGE))
docker-build:
	$(BUILD_GPU)

# The pytest module builds the image itself (cached layers make a rebuild take seconds).
docker-test: install docker-deps
	$(PY) -m pytest -q tests/test_container_image.py

# The CUDA image: a build of about 12 GB and many minutes, so not part of `make test` (CI's time).
# tests/test_cuda_image.py runs it without a GPU. Skipped, saying why, without podman or with less
# than CUDA_MIN_FREE_GB free where podman keeps its images.
CUDA_MIN_FREE_GB ?= 30
docker-test-cuda: install docker-deps
	@command -v podman >/dev/null || { echo "docker-test-cuda: SKIPPED: podman is not installed" >&2; exit 0; }; \
	store="$$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)"; \
	free_gb="$$(df -BG --output=avail "$$store" 2>/dev/null | tail -n 1 | tr -dc 0-9)"; \
	if [ "$${free_gb:-0}" -lt $(CUDA_MIN_FREE_GB) ]; then \
	  echo "docker-test-cuda: SKIPPED: $${free_gb:-?} GB free in $$store, the build needs $(CUDA_MIN_FREE_GB)" >&2; \
	  exit 0; fi; \
	start=$$(date +%s); nice -n 10 env $(BUILD_GPU) || exit 1; \
	echo "docker-test-cuda: $(IMAGE_GPU) built in $$(( $$(date +%s) - start )) s," \
	  "$$(podman image inspect --format '{{.Size}}' $(IMAGE_GPU)) bytes" >&2; \
	SERVE_TEST_CUDA_IMAGE=1 SERVE_CUDA_IMAGE=$(IMAGE_GPU) $(PY) -m pytest -q -rs -s tests/test_cuda_image.py

docker-run-cpu: docker-build-cpu
	$(CONTAINER_ENGINE) run --rm --init $(if $(filter podman,$(CONTAINER_ENGINE)),$(PODMAN_RUN)) \
	  --network host -e SAGEMAKER_BIND_TO_PORT=$(PORT) $(IMAGE_CPU) serve

docker-clean:
	-$(CONTAINER_ENGINE) rmi $(IMAGE_CPU) $(IMAGE_GPU) localhost/serve:cpu-test 2>/dev/null
	-$(CONTAINER_ENGINE) image prune -f
	rm -rf build/docker-context

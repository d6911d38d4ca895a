# Container image targets (included by the Makefile).
#   make docker-build-cpu   CPU image serve:cpu (podman where it is installed, else docker)
#   make docker-build       CUDA image serve:gpu (BASE_IMAGE=... to change the CUDA base)
#   make docker-test        install podman if needed, build the CPU image, run it, call it
#   make docker-deps        apt-get install podman, runc, debootstrap (root; skipped if present)
#   make docker-run-cpu     serve the embedded SmolLM2 from the CPU image on $(PORT)
#   make docker-clean       remove the serve:* images and dangling layers
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGE_CPU ?= serve:cpu
IMAGE_GPU ?= serve:gpu
BASE_IMAGE ?=
PODMAN_RUN := --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768

.PHONY: docker-deps docker-build docker-build-cpu docker-test docker-run-cpu docker-clean

# Where podman cannot be installed (no root, no apt), the container test skips and says why.
docker-deps:
	@docker/install-podman.sh || echo "docker-deps: podman not installed;" \
	  "tests/test_container_image.py will skip" >&2

docker-build-cpu:
	CONTAINER_ENGINE=$(CONTAINER_ENGINE) docker/build-image.sh --file docker/Dockerfile.cpu \
	  --tag $(IMAGE_CPU) $(if $(BASE_IMAGE),--base $(BASE_IMAGE))

docker-build:
	CONTAINER_ENGINE=$(CONTAINER_ENGINE) docker/build-image.sh --file docker/Dockerfile \
	  --tag $(IMAGE_GPU) $(if $(BASE_IMAGE),--base $(BASE_IMAGE))

# The pytest module builds the image itself (cached layers make a rebuild take seconds).
docker-test: install docker-deps
	$(PY) -m pytest -q tests/test_container_image.py

docker-run-cpu: docker-build-cpu
	$(CONTAINER_ENGINE) run --rm --init $(if $(filter podman,$(CONTAINER_ENGINE)),$(PODMAN_RUN)) \
	  --network host -e SAGEMAKER_BIND_TO_PORT=$(PORT) $(IMAGE_CPU) serve

docker-clean:
	-$(CONTAINER_ENGINE) rmi $(IMAGE_CPU) $(IMAGE_GPU) localhost/serve:cpu-test 2>/dev/null
	-$(CONTAINER_ENGINE) image prune -f
	rm -rf build/docker-context

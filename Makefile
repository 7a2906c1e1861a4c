# Two entry points: `make demo` and `make test`. Every install step lives here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages the tests and the lab use (tshark, tcpdump, conntrack, dnsmasq: later slices and
# differential checks; chromium: the "no external request" browser test; nfacct: the accounting objects
# kube-proxy's recent rule sets name, created in lab namespaces so the corpus rules load; traceroute and
# tracepath: the reference for path discovery; openssh-client: ssh-keygen signs bundles and checks our verify,
# and ssh carries `fleet collect`; openssh-server: the fleet tests' nodes run a real sshd in lab namespaces;
# mmdebstrap, podman, runc: the image test builds the Containerfile's image from a Debian rootfs, no registry).
APT_PACKAGES := iproute2 iptables nftables conntrack tcpdump tshark dnsmasq libpcap0.8 iputils-ping \
                util-linux zstd tar chromium nfacct traceroute iputils-tracepath openssh-client openssh-server \
                mmdebstrap podman runc
# Only the benchmarks need these: the reference tools they compare against (bench/collect.py runs sos).
BENCH_PACKAGES := sosreport
DEMO_DIR := demo

.PHONY: demo test system-deps bench-deps venv schemas typecheck image clean

# Install whichever of the Debian packages in $(1) are missing (as root, where apt-get exists).
define apt_install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: skipping Debian packages ($(1))"; fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES))

bench-deps: system-deps venv
	$(call apt_install,$(BENCH_PACKAGES))

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

schemas: venv
	$(PY) -m bundle.schemas

typecheck: venv
	$(VENV)/bin/mypy

# The main job on an embedded default: build the MTU-blackhole lab, collect from the pod and the
# node, validate, summarise, render the appendix, and take the lab down again.
demo: system-deps venv
	@bash -c 'set -e; trap "$(PY) -m bundle lab down mtu >/dev/null" EXIT; \
	  $(PY) -m bundle lab down mtu >/dev/null; \
	  $(PY) -m bundle lab up mtu; mkdir -p $(DEMO_DIR); \
	  $(PY) -m bundle collect --target 10.244.0.2:8080 --netns nb-mtu-pod --netns nb-mtu-node \
	      --ticket DEMO-1 --note "checkout latency up; large responses stall" -o $(DEMO_DIR)/incident-mtu.tar.zst; \
	  $(PY) -m bundle validate $(DEMO_DIR)/incident-mtu.tar.zst; \
	  $(PY) -m bundle show $(DEMO_DIR)/incident-mtu.tar.zst; \
	  $(PY) -m bundle summary $(DEMO_DIR)/incident-mtu.tar.zst --format text; \
	  $(PY) -m bundle render $(DEMO_DIR)/incident-mtu.tar.zst -o $(DEMO_DIR)/incident-mtu.html >/dev/null; \
	  echo; echo "bundle:   $(DEMO_DIR)/incident-mtu.tar.zst"; echo "appendix: $(DEMO_DIR)/incident-mtu.html"'

test: system-deps venv
	$(PY) -m bundle.schemas --check
	$(VENV)/bin/mypy
	$(PY) -m pytest -ra -p no:cacheprovider --durations=25

# The image `fleet collect --kube` runs (Containerfile): wheels of this checkout and its dependencies in
# dist/image, then an offline build on Debian bookworm (BASE=... for another base; push it and pass --image).
IMAGE ?= localhost/netbundle:$(shell $(PY) -c 'import bundle; print(bundle.__version__)')
image: system-deps venv
	rm -rf dist/image
	$(PY) -m pip wheel --no-build-isolation -q -w dist/image .
	podman build --network none $(if $(BASE),--build-arg BASE=$(BASE)) -t $(IMAGE) -f Containerfile .

clean:
	rm -rf $(VENV) dist build $(DEMO_DIR) .pytest_cache .mypy_cache

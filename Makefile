# The README's two commands: `make serve` and `make test`. Both create .venv and install the
# CPU build of torch first (PyTorch's CPU index, or a local wheel where pip is configured with
# one), so resolving the project never pulls a multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Debian packages the integration tests use when present (real Prometheus, docker-compose
# config, headless Chromium, redis-server for the session store, HAProxy + dnsmasq for the
# load-balancer test, the CNI DNS plugin for podman-compose networks); installed only when
# running as root with apt-get available.
SYSTEM_TEST_PACKAGES ?= prometheus docker-compose chromium openssl redis-server haproxy dnsmasq-base \
	golang-github-containernetworking-plugin-dnsname \
	flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
# podman for the image and compose tests (S4D_TEST_IMAGE=0 opts out), set up for this project's VMs by the
# shared tool when it is there (runc, cgroupfs, host networking by default)
PODMAN_HERE ?= ../shared/tools/podman-here.sh

.PHONY: serve test lint system-test-deps speech-engines clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX) --retries 1 --timeout 15
	touch $@

$(VENV)/.serve: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[server,client,onnx]"
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[server,client,onnx,train,dev]"
	touch $@

serve: $(VENV)/.serve
	$(VENV)/bin/s4d serve

system-test-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; for p in $(SYSTEM_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages for integration tests:$$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
				|| echo "apt-get failed: the tests that need$$missing will be skipped"; \
		fi; \
	else echo "not root or no apt-get: tests needing $(SYSTEM_TEST_PACKAGES) skip when those are absent"; fi
	@if [ "$$(id -u)" = 0 ] && [ -f $(PODMAN_HERE) ] && [ ! -f /etc/containers/containers.conf ]; then \
		bash $(PODMAN_HERE) setup || echo "podman setup failed: the image tests will be skipped"; fi

# Engines four and five of the keyword bank (model/data/kws_bank.py): MBROLA's recorded-diphone
# voices (contrib / non-free) and SVOX Pico (non-free), and festival's British voices rab
# (validation) and don (train) from contrib. Only for rebuilding the bank
# (python scripts/build_data13_bank.py kws) and the real-speech check (Asterisk prompts,
# python -m bench.real_speech); the tests that need them skip without them.
MBROLA_VOICES ?= us1 us2 us3 en1 af1 nl2 fr1 fr4 de1 de2 de3 de4 de5 de6 gr2 hu1 pl1 ro1 sw1 sw2 \
	es1 es2 fr2 fr3 fr5 fr6 fr7 id1 ir1
speech-engines:
	@[ -f /etc/apt/sources.list.d/s4d-contrib-nonfree.sources ] || printf '%s\n' 'Types: deb' \
		'URIs: http://deb.debian.org/debian' "Suites: $$(. /etc/os-release && echo $$VERSION_CODENAME)" \
		'Components: contrib non-free' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
		> /etc/apt/sources.list.d/s4d-contrib-nonfree.sources
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		espeak-ng mbrola $(addprefix mbrola-,$(MBROLA_VOICES)) libttspico-utils \
		festvox-rablpc16k festvox-don festvox-us1 festvox-us3 rhvoice rhvoice-english \
		$(foreach l,en fr it ru es,asterisk-core-sounds-$(l) asterisk-core-sounds-$(l)-g722)

test: $(VENV)/.test system-test-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)

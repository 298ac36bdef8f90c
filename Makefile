# gridops.metal entry point.  `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
VENV ?= .venv
COLLECTIONS := $(CURDIR)/build/collections
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export CONTAINERS_CONF := $(CURDIR)/roles/lab/files/containers.conf
export DEBIAN_FRONTEND := noninteractive

TIERS := lint sanity unit integration molecule e2e

.PHONY: help bootstrap deps install test $(TIERS) demo deploy demo-down lab-status build changelog clean

help:
	@echo "make demo        bring up the lab and run the collection against it"
	@echo "make deploy      deploy Debian 12 onto the lab's nodes (after make demo)"
	@echo "make demo-down   remove the lab and everything it made"
	@echo "make test        every test tier: $(TIERS)"
	@echo "make <tier>      one tier alone"
	@echo "make build       ansible-galaxy collection build"

# Needed before pip runs: venv itself, and python3-libvirt, which satisfies
# virtualbmc's libvirt-python (pip cannot build it here).
BOOTSTRAP_DEBS := python3-venv python3-libvirt
$(VENV)/.stamp: requirements.txt requirements-dev.txt
	@for p in $(BOOTSTRAP_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

bootstrap: $(VENV)/.stamp

# Some packages' postinst start their service (postgresql, munge, slurm, oar,
# apache2): a policy-rc.d keeps them stopped during the install (tests run
# private instances), and nothing may be left running afterwards.
deps: bootstrap
	@missing="$$($(VENV)/bin/bindep -b || true)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; policy=1; fi; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; rc=$$?; \
		[ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; \
		[ $$rc -eq 0 ] || exit $$rc; \
		if pgrep -x 'munged|slurmctld|slurmd|postgres|Almighty|apache2|cron' >/dev/null; then \
			echo "a package started a service; stop it" >&2; exit 1; fi; \
	fi

install: deps
	mkdir -p $(COLLECTIONS)/ansible_collections/gridops
	ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/gridops/metal

test: install
	$(VENV)/bin/python tests/tiers.py $(TIERS)

$(TIERS): install
	$(VENV)/bin/python tests/tiers.py $@

demo: install
	ansible-playbook playbooks/demo.yml

deploy: install
	ansible-playbook playbooks/environments.yml --tags images
	ansible-playbook playbooks/deploy.yml

demo-down: install
	ansible-playbook playbooks/lab_down.yml

lab-status: install
	ansible-playbook playbooks/lab_status.yml

build: install
	ansible-galaxy collection build --force --output-path build/

changelog: install
	antsibull-changelog release

clean:
	rm -rf build .pytest_cache

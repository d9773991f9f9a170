# The two commands the README promises. Both create or refresh .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-photos test bench experiments photos photo-study photo-study-snapshot photo-mse photo-stab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smoothapi demo

# ImageNet's EfficientNet-Lite2 as a vision API on held-out photos, without and with the
# shipped photo denoiser (about 3 minutes on 2 busy CPU cores: kept out of `make demo`).
demo-photos: $(STAMP)
	mkdir -p results/tmp && $(BIN)/smoothapi demo --photos --out results/tmp/photo_demo.png

# Types (mypy over src/, settings in pyproject.toml) and lint first, then the tests, on two
# worker processes (pytest-xdist; the suite takes about 4 minutes on 2 cores, 7 on one).
# pytest exits 5 when it collected no tests: that is a failure too.
test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m ruff check src tests benchmarks examples scripts
	$(BIN)/python -m pytest -q -n 2; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests" >&2; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_certify.py
	$(BIN)/python benchmarks/bench_client.py
	$(BIN)/python benchmarks/bench_queries.py
	$(BIN)/python benchmarks/bench_denoiser.py
	$(BIN)/python benchmarks/bench_classifier.py

# The Fashion-MNIST study (hours on 2 CPU cores; resumes where it stopped).
experiments: $(STAMP)
	$(BIN)/smoothapi experiment fashion-mnist --out results/fashion-mnist

# Training photos for the natural-photo study: Debian wallpaper packages, unpacked
# without root into the user's cache (no network beyond apt's own mirror). The stamp
# names the package list, so adding a package unpacks again.
PHOTO_CACHE := $(HOME)/.cache/smoothapi/photos
PHOTO_PACKAGES := mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 \
	lomiri-wallpapers-20.04
PHOTO_STAMP := $(PHOTO_CACHE)/.unpacked-$(shell echo $(PHOTO_PACKAGES) | md5sum | cut -c1-8)
photos: $(PHOTO_STAMP)
$(PHOTO_STAMP):
	mkdir -p $(PHOTO_CACHE)/debs
	cd $(PHOTO_CACHE)/debs && apt-get download $(PHOTO_PACKAGES)
	for deb in $(PHOTO_CACHE)/debs/*.deb; do dpkg-deb -x $$deb $(PHOTO_CACHE); done
	touch $@

# The natural-photo study (hours on 2 CPU cores; resumes where it stopped).
photo-study: $(STAMP) photos
	$(BIN)/smoothapi experiment natural-photos --out results/natural-photos

# The noise-level-aware photo MSE denoiser: a bake-off of architectures, then hours of
# training of the best on validation photos (resumes where it stopped; see its README).
photo-mse: $(STAMP) photos
	$(BIN)/smoothapi experiment photo-mse --out results/photo-mse

# STAB+MSE from the photo MSE denoiser, per access and sigma (hours; resumes).
photo-stab: $(STAMP) photos
	$(BIN)/smoothapi experiment photo-stab --out results/photo-stab \
		--start results/photo-mse/photo-mse.safetensors

# Before a machine goes away: gzipped copies of unfinished certifications' journals, to
# commit; `make photo-study` on the next machine resumes from them.
photo-study-snapshot: $(STAMP)
	$(BIN)/smoothapi experiment natural-photos --out results/natural-photos --snapshot

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

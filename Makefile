# Reproduce the shipped pathsegmentor-tiny v2 from ../shared/data (2 CPU cores: about 1.5 hours of training).
# v2 is fine-tuned from v1 (the weights of commit $(V1_COMMIT), extracted from git history by `v1-weights`).
CORPUS ?= runs/pathseg-shared
RUN ?= runs/tiny-v2
V1 ?= runs/tiny-v1
V1_COMMIT ?= 4e248bd
V1_FILES = pathsegmentor/weights/pathsegmentor-tiny

.PHONY: retrain-tiny corpus v1-weights train-tiny calibrate-tiny eval-tiny bench-tiny train-tiny-v1 test

retrain-tiny: corpus v1-weights train-tiny calibrate-tiny eval-tiny

corpus:
	pathseg-build --config configs/data/shared.yaml --out $(CORPUS)

v1-weights:
	mkdir -p $(V1)
	git show $(V1_COMMIT):$(V1_FILES)/model.safetensors > $(V1)/model.safetensors
	git show $(V1_COMMIT):$(V1_FILES)/config.json > $(V1)/config.json

train-tiny:
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-v2-cpu.yaml output_dir=$(RUN) \
	  data.corpus=$(abspath $(CORPUS)) model.init_from=$(abspath $(V1))

# presence threshold: maximises MCC on the TRAINING split (never validation), written into the model's config
calibrate-tiny:
	python -m pathsegmentor.evaluation.presence $(RUN)/model --data $(CORPUS) --split train --per-source 40 --write \
	  --out $(RUN)/presence-train.json

eval-tiny:
	pathsegmentor evaluate --model $(RUN)/model --data $(CORPUS) --split validation --out $(RUN)/eval-validation \
	  --cross-prompt gland --cross-prompt "glandular structures"
	python -m pathsegmentor.evaluation.vocabulary $(RUN)/model --counts $(CORPUS)/report/counts.csv \
	  --by-category $(RUN)/eval-validation/by_category.csv

# the figures of the model card's instance and prompt tables (validation split)
bench-tiny:
	python bench/instances.py --model $(RUN)/model --data $(CORPUS)
	pathsegmentor evaluate --model $(RUN)/model --data $(CORPUS) --split validation --source ebhi_seg --mpp-mode none \
	  --out $(RUN)/eval-ebhi-mpp-none
	python bench/prompt_targets.py --model $(RUN)/model --data $(CORPUS) --limit 40

# v1 from scratch (the recipe of the first release; v1's corpus had no EBHI-Seg: pass sources=... to compare)
train-tiny-v1:
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-cpu.yaml output_dir=runs/tiny-cpu \
	  data.corpus=$(abspath $(CORPUS))

test:
	python -m pytest -q

# Reproduce the shipped pathsegmentor-tiny from ../shared/data (2 CPU cores: about an hour of training).
CORPUS ?= runs/pathseg-shared
RUN ?= runs/tiny-cpu

.PHONY: retrain-tiny corpus train-tiny eval-tiny test

retrain-tiny: corpus train-tiny eval-tiny

corpus:
	pathseg-build --config configs/data/shared.yaml --out $(CORPUS)

train-tiny:
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-cpu.yaml output_dir=$(RUN) data.corpus=$(abspath $(CORPUS))

eval-tiny:
	pathsegmentor evaluate --model $(RUN)/model --data $(CORPUS) --split validation --out $(RUN)/eval-validation \
	  --cross-prompt gland --cross-prompt nuclei --cross-prompt "inflammatory nuclei" \
	  --cross-prompt "cell nuclei" --cross-prompt nucleus --cross-prompt "glandular structures"
	python -m pathsegmentor.evaluation.vocabulary $(RUN)/model --counts $(CORPUS)/report/counts.csv \
	  --by-category $(RUN)/eval-validation/by_category.csv

test:
	python -m pytest -q

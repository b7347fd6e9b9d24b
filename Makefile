# Reproduce the shipped pathsegmentor-tiny v3 from ../shared/data (2 CPU cores: about 80 minutes of training).
# v3 continues v2 (the weights of commit $(V2_COMMIT), extracted from git history by `v2-weights`); v2 itself was
# fine-tuned from v1 (commit $(V1_COMMIT), `v1-weights`, recipe configs/train/tiny-v2-cpu.yaml: `make train-tiny-v2`).
CORPUS ?= runs/pathseg-shared
RUN ?= runs/tiny-v3
MODEL ?= $(RUN)/model-presence
V1 ?= runs/tiny-v1
V1_COMMIT ?= 4e248bd
V2 ?= runs/tiny-v2-weights
V2_COMMIT ?= a1338fc
WEIGHTS = pathsegmentor/weights/pathsegmentor-tiny

.PHONY: ablate-tiny retrain-tiny corpus v1-weights v2-weights train-tiny train-tiny-v2 refit-presence calibrate-tiny eval-tiny bench-tiny train-tiny-v1 test

retrain-tiny: corpus v2-weights train-tiny refit-presence calibrate-tiny eval-tiny

corpus:
	pathseg-build --config configs/data/shared.yaml --out $(CORPUS)

v1-weights:
	mkdir -p $(V1)
	git show $(V1_COMMIT):$(WEIGHTS)/model.safetensors > $(V1)/model.safetensors
	git show $(V1_COMMIT):$(WEIGHTS)/config.json > $(V1)/config.json

v2-weights:
	mkdir -p $(V2)
	git show $(V2_COMMIT):$(WEIGHTS)/model.safetensors > $(V2)/model.safetensors
	git show $(V2_COMMIT):$(WEIGHTS)/config.json > $(V2)/config.json

# two legs, as the shipped run: steps 0-600 with one exhaustive-absent negative per crop (the leg ends with exit
# status 3 right after its checkpoint, hence the leading '-'), then resumed exactly with two (the recipe's value)
train-tiny:
	-OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-v3-cpu.yaml output_dir=$(RUN) \
	  data.corpus=$(abspath $(CORPUS)) model.init_from=$(abspath $(V2)) data.negatives_per_image=1 train.stop_after=600
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-v3-cpu.yaml output_dir=$(RUN) \
	  data.corpus=$(abspath $(CORPUS)) model.init_from=$(abspath $(V2)) --resume

train-tiny-v2: v1-weights
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-v2-cpu.yaml output_dir=runs/tiny-v2 \
	  data.corpus=$(abspath $(CORPUS)) model.init_from=$(abspath $(V1))

# the presence head alone refit on the trained model's own decoder features of the TRAINING split (the shipped
# weights are this step's output: $(MODEL))
refit-presence:
	OMP_NUM_THREADS=2 python -m pathsegmentor.training.presence_refit $(RUN)/model --data $(CORPUS) --out $(MODEL) \
	  --features $(RUN)/presence-features.npz
	# point/box prompts through the instance decoder, boxes by mask component (both chosen on the training split);
	# nucleus-mask parts over 5000 µm² dropped (bench/cell_components.py: the largest on the training split is 1838)
	python -c "import json; p = '$(MODEL)/config.json'; c = json.load(open(p)); \
	  c['inference'].update(geometric_mode='instances', geometric_box='component', max_cell_component_um2=5000.0); \
	  open(p, 'w').write(json.dumps(c, indent=2) + '\n')"

# presence threshold: maximises MCC on the TRAINING split (never validation), written into the model's config
calibrate-tiny:
	python -m pathsegmentor.evaluation.presence $(MODEL) --data $(CORPUS) --split train --per-source 40 --write \
	  --out $(MODEL)/presence-train.json

eval-tiny:
	pathsegmentor evaluate --model $(MODEL) --data $(CORPUS) --split validation --out $(RUN)/eval-validation \
	  --cross-prompt gland --cross-prompt "glandular structures"
	python -m pathsegmentor.evaluation.vocabulary $(MODEL) --counts $(CORPUS)/report/counts.csv \
	  --by-category $(RUN)/eval-validation/by_category.csv

# the figures of the model card's instance and prompt tables (validation split)
bench-tiny:
	python bench/instances.py --model $(MODEL) --data $(CORPUS)
	pathsegmentor evaluate --model $(MODEL) --data $(CORPUS) --split validation --source ebhi_seg --mpp-mode none \
	  --out $(RUN)/eval-ebhi-mpp-none
	pathsegmentor evaluate --model $(MODEL) --data $(CORPUS) --split validation --source ebhi_seg --mpp-mode auto \
	  --out $(RUN)/eval-ebhi-mpp-auto
	python bench/prompt_targets.py --model $(MODEL) --data $(CORPUS) --limit 40

# the accuracy levers of the model card's ablation table: 600 more steps from the shipped weights under the v3 recipe,
# one lever changed per run (stain augmentation off; separation loss x2), each scored by bench/instances.py
ABLATE = runs/ablate
ABLATE_ARGS = data.corpus=$(abspath $(CORPUS)) model.init_from=$(abspath $(WEIGHTS)) train.steps=600 \
  train.save_every=100 optim.warmup_steps=30
ablate-tiny:
	for lever in "longer" "no-stain-aug data.hed_sigma=0 data.hed_bias=0 data.brightness_contrast=0" \
	             "separation-x2 loss.separation=2.0"; do set -- $$lever; name=$$1; shift; \
	  OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-v3-cpu.yaml output_dir=$(ABLATE)/$$name \
	    $(ABLATE_ARGS) "$$@" && \
	  python bench/instances.py --model $(ABLATE)/$$name/model --no-tta > $(ABLATE)/$$name.instances.txt || exit 1; \
	done

# v1 from scratch (the recipe of the first release; v1's corpus had no EBHI-Seg: pass sources=... to compare)
train-tiny-v1:
	OMP_NUM_THREADS=2 pathsegmentor train --config configs/train/tiny-cpu.yaml output_dir=runs/tiny-cpu \
	  data.corpus=$(abspath $(CORPUS))

test:
	python -m pytest -q

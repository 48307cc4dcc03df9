#!/usr/bin/env bash
# End-to-end on generated data: synth -> fit BGAD / build M3DM -> score (all three detectors, Ray) -> evaluate.
# Run from the repo root after `make test` (it uses .venv). Writes under /tmp/e2e/work.
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/adray
W=/tmp/e2e/work; rm -rf $W; mkdir -p $W
$A synth --output $W/mvtec --layout mvtec --categories bottle --size 64 --n-train 24 --n-test-good 8 --n-test-per-defect 4
$A synth --output $W/mvtec3d --layout mvtec3d --categories cookie --size 64 --n-train 24 --n-validation 8 --n-test-good 8 --n-test-per-defect 4
$A fit-bgad --train $W/mvtec --category bottle --output $W/models/bgad-bottle --backbone test_efficientnet --weights random \
   --image-size 64 --flow-blocks 4 --epochs 6 --sub-epochs 2 --batch-size 16 --chunk-size 1024 --num-anomalies 6 --no-focal --workers 0
$A build-m3dm --train $W/mvtec3d --category cookie --output $W/models/m3dm-cookie --mode rgb+xyz --tiny --workers 1 --uff-workers 1
$A score --input $W/mvtec --output $W/out --detector winclip --weights random --detector-option model_name=adray-tiny-clip \
   --plugin adray.backbones.open_clip:register_tiny_clip --detector $W/models/bgad-bottle --run-id e2e-2d
$A score --input $W/mvtec3d --output $W/out --detector $W/models/m3dm-cookie --run-id e2e-3d
$A evaluate --results $W/out --input $W/mvtec --report $W/report-2d
$A evaluate --results $W/out --input $W/mvtec3d --report $W/report-3d

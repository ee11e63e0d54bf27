// A batch job that needs one GPU; the Borglet sets CUDA_VISIBLE_DEVICES for it.
//   borgcfg up examples/gpu.jsonnet --wait
local borg = import 'borg.libsonnet';

borg.batch {
  name: 'gpu-smoke',
  requirements+: { cpu: 1, ram: '1Gi', gpu: 1 },
  command: 'echo "GPUs: $CUDA_VISIBLE_DEVICES"; nvidia-smi -L || true',
} + borg.env({ PYTHONUNBUFFERED: '1' })

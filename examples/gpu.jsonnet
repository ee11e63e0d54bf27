// A batch job that needs one GPU; the Borglet sets CUDA_VISIBLE_DEVICES for it.
// borg.gpu(1) also tolerates the conventional `gpu` taint (`borglet --taint gpu=true:NoSchedule`).
//   borgcfg up examples/gpu.jsonnet --wait
local borg = import 'borg.libsonnet';

borg.batch {
  name: 'gpu-smoke',
  command: 'echo "GPUs: $CUDA_VISIBLE_DEVICES"; nvidia-smi -L || true',
} + borg.resources(cpu=1, ram=borg.Gi(1)) + borg.gpu(1) + borg.env({ PYTHONUNBUFFERED: '1' })

// A batch job that needs one GPU. The master picks a whole device for it and the Borglet
// sets CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES to it (its UUID when the Borglet
// found it through NVML, else its index); where /dev/nvidiaN exist, the task's device cgroup
// lets it open only its own device (cgroup v1), so nvidia-smi lists just that one.
// borg.gpu(1) also tolerates the conventional `gpu` taint (`borglet --taint gpu=true:NoSchedule`).
//   borgcfg up examples/gpu.jsonnet --wait
//   borgcfg status gpu-smoke -o json    # tasks[].gpus: the devices it got
local borg = import 'borg.libsonnet';

borg.batch {
  name: 'gpu-smoke',
  command: 'echo "GPUs: $CUDA_VISIBLE_DEVICES"; nvidia-smi -L || true',
} + borg.resources(cpu=1, ram=borg.Gi(1)) + borg.gpu(1) + borg.env({ PYTHONUNBUFFERED: '1' })

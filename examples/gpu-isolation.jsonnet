// Trains nothing: proves GPU isolation. A gang of two tasks, one GPU each, placed together
// or not at all. Each asks the CUDA driver (through ctypes: no framework needed) which
// devices it sees and prints them; a task that sees anything but exactly one GPU fails.
//   borgcfg up examples/gpu-isolation.jsonnet --wait
//   borgcfg logs gpu-isolation/0; borgcfg logs gpu-isolation/1   # two different UUIDs
// Without a GPU (no libcuda) each task only prints its environment and succeeds.
local borg = import 'borg.libsonnet';

local see = |||
  import ctypes, os, sys
  print("task %s: CUDA_VISIBLE_DEVICES=%s" % (
      os.environ["BORG_TASK_INDEX"], os.environ.get("CUDA_VISIBLE_DEVICES", "")))
  try:
      cuda = ctypes.CDLL("libcuda.so.1")
  except OSError:
      sys.exit(print("no libcuda here: nothing more to show"))
  if cuda.cuInit(0) != 0:
      sys.exit("cuInit failed: no usable GPU")
  n = ctypes.c_int()
  cuda.cuDeviceGetCount(ctypes.byref(n))
  for i in range(n.value):
      dev, name, uuid = ctypes.c_int(), ctypes.create_string_buffer(96), (ctypes.c_ubyte * 16)()
      cuda.cuDeviceGet(ctypes.byref(dev), i)
      cuda.cuDeviceGetName(name, 96, dev)
      cuda.cuDeviceGetUuid(uuid, dev)
      h = bytes(uuid).hex()
      print("sees %s GPU-%s-%s-%s-%s-%s" % (
          name.value.decode(), h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
  sys.exit(0 if n.value == 1 else "sees %d GPUs, not exactly its own one" % n.value)
|||;

borg.batch {
  name: 'gpu-isolation',
  replicas: 2,
  command: ['python3', '-c', see],
  restart: { policy: 'never' },
} + borg.resources(cpu=0.5, ram=borg.Mi(256)) + borg.gpu(1) + borg.gang

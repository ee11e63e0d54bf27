// A batch array: three tasks that each print their index and exit 0.
//   borgcfg up examples/batch.jsonnet --wait
local borg = import 'borg.libsonnet';

borg.batch {
  name: 'batch-array',
  run_as: 'nobody',
  replicas: 3,
  requirements+: { ram: '32Mi' },
  command: 'echo "task $BORG_TASK_INDEX of $BORG_JOB done"',
}

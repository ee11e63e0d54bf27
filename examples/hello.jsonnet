// The README's first job: two replicas printing a greeting every 5 seconds.
//   borgcfg up examples/hello.jsonnet
local borg = import 'borg.libsonnet';

borg.service {
  name: 'hello',
  // An unprivileged account with no writable home: the task needs nothing but stdout.
  run_as: 'nobody',
  requirements: { cpu: 0.1, ram: '32Mi' },
  command: 'while true; do echo "hello from $BORG_JOB/$BORG_TASK_INDEX"; sleep 5; done',
} + borg.replicated(2)

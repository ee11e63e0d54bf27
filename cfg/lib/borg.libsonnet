// borg.libsonnet: templates and helpers for borgcell job configs (docs/config.md).
//
//   local borg = import 'borg.libsonnet';
//   borg.httpServer('web', ['./server', '--port', '$BORG_PORT'])
//     + borg.replicated(3) + borg.spreadAcross('rack') + borg.resources(cpu=0.5, ram=borg.Mi(256))
//
// borgcfg puts this file's directory on the Jsonnet library path, so the import works from
// any config file. Everything here emits only keys the job schema accepts (cfg/schema.py);
// extend nested objects with `+:` (e.g. `requirements+: {...}`) to keep the defaults.
local bandLow = { free: 0, batch: 100, production: 200, monitoring: 300 };

{
  // Lowest priority of each band (SPEC.md): free 0-99, batch 100-199, production 200-299,
  // monitoring 300-399.
  bands:: bandLow,

  // A long-running job in the production band: tasks are always restarted, one replica
  // down at a time during updates. Override `band` to move it (the priority follows), or
  // `priority` within the band; a priority outside `band` is a validation error.
  service:: {
    kind: 'service',
    band: 'production',
    priority: bandLow[self.band],
    replicas: 1,
    requirements: { cpu: 0.1, ram: '64Mi' },
    restart: { policy: 'always', backoff: '1s' },
    update: { max_unavailable: 1 },
  },

  // A run-to-completion job in the batch band: failed tasks are retried 3 times.
  batch:: {
    kind: 'batch',
    band: 'batch',
    priority: bandLow[self.band],
    replicas: 1,
    requirements: { cpu: 0.1, ram: '64Mi' },
    restart: { policy: 'on-failure', max_restarts: 3, backoff: '1s' },
    update: { max_unavailable: 1 },
  },

  // A service serving HTTP on one named port (its number is in $BORG_PORT and
  // $BORG_PORT_<NAME>) with a health check on `path`.
  httpServer(name, command, port='http', path='/healthz', interval='10s'):: self.service {
    name: name,
    command: command,
    requirements+: { ports: [port] },
    health: $.httpHealth(port, path, interval),
  },

  // Mixin setting the replica count: `borg.service { ... } + borg.replicated(3)`.
  replicated(n):: { replicas: n },

  // Mixin moving a job to another priority band (at that band's lowest priority).
  band(name):: { band: name, priority: bandLow[name] },

  // A health object checking `path` over HTTP on the named port (declare it in
  // requirements.ports): `health: borg.httpHealth('http', '/healthz')`.
  httpHealth(port='http', path='/healthz', interval='10s'):: {
    http: { port: port, path: path },
    interval: interval,
  },

  // A health object that connects to the named port.
  tcpHealth(port='http', interval='10s'):: { tcp: { port: port }, interval: interval },

  // Mixin adding environment variables to whatever the job already sets.
  env(obj):: { env+: obj },

  // Mixin setting cpu and ram (keeps other requirements): `borg.resources(0.5, borg.Gi(1))`.
  resources(cpu=null, ram=null, disk=null):: {
    requirements+: std.prune({ cpu: cpu, ram: ram, disk: disk }),
  },

  // Mixin asking for `n` GPUs and tolerating the conventional `gpu` taint.
  gpu(n=1):: {
    requirements+: { gpu: n },
    tolerations+: [{ key: 'gpu' }],
  },

  // Mixin placing all of a job's replicas in one scheduler pass or none (a training job
  // whose workers are useless alone).
  gang:: { gang: true },

  // Mixin placing replicas on distinct values of a machine attribute.
  spreadAcross(attr):: { spread: attr },

  // Mixin adding one placement constraint: `borg.constraint('rack', '!=', 'r1')`.
  constraint(attr, op, value=null):: {
    constraints+: [std.prune({ attr: attr, op: op, value: value })],
  },

  // Sizes: `borg.Mi(512)` is '512Mi'.
  Ki(n):: '%dKi' % n,
  Mi(n):: '%dMi' % n,
  Gi(n):: '%dGi' % n,
  Ti(n):: '%dTi' % n,
}

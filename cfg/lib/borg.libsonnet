// borg.libsonnet: templates for borgcell job configs.
//
//   local borg = import 'borg.libsonnet';
//   borg.service { name: 'web', command: ['./server'], requirements+: { ports: ['http'] } }
//     + borg.replicated(3) + { health: borg.httpHealth() }
//
// borgcfg puts this file's directory on the Jsonnet library path, so the import works from
// any config file. Everything here emits only keys the job schema accepts (cfg/schema.py);
// extend nested objects with `+:` (e.g. `requirements+: {...}`) to keep the defaults.
{
  // A long-running job in the production band (200-299): tasks are always restarted.
  service:: {
    kind: 'service',
    priority: 200,
    replicas: 1,
    requirements: { cpu: 0.1, ram: '64Mi' },
    restart: { policy: 'always', backoff: '1s' },
    update: { max_unavailable: 1 },
  },

  // A run-to-completion job in the batch band (100-199): failed tasks are retried 3 times.
  batch:: {
    kind: 'batch',
    priority: 100,
    replicas: 1,
    requirements: { cpu: 0.1, ram: '64Mi' },
    restart: { policy: 'on-failure', max_restarts: 3, backoff: '1s' },
    update: { max_unavailable: 1 },
  },

  // Mixin setting the replica count: `borg.service { ... } + borg.replicated(3)`.
  replicated(n):: { replicas: n },

  // A health object checking `path` over HTTP on the named port (declare it in
  // requirements.ports): `health: borg.httpHealth('http', '/healthz')`.
  httpHealth(port='http', path='/healthz', interval='10s'):: {
    http: { port: port, path: path },
    interval: interval,
  },

  // Mixin adding environment variables to whatever the job already sets.
  env(obj):: { env+: obj },
}

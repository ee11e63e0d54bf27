// The web example written with the library's httpServer template: a named port, an HTTP
// health check on it, three replicas spread across racks, and a rack to avoid.
//   borgcfg up examples/api.jsonnet --tla-str env=prod     (env defaults to staging)
local borg = import 'borg.libsonnet';

function(env='staging')
borg.httpServer('api-' + env, 'exec python3 -m http.server $BORG_PORT --bind 127.0.0.1', path='/')
+ borg.replicated(3)
+ borg.spreadAcross('rack')
+ borg.constraint('rack', '!=', 'r9')
+ borg.resources(cpu=0.2, ram=borg.Mi(64))
+ borg.env({ DEPLOY_ENV: env })
+ { run_as: 'nobody', health+: { initial_delay: '2s' } }

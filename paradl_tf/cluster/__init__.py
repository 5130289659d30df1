"""Clusters of TensorFlow servers: specs, TF_CONFIG, TensorFlow's cluster resolvers, and a local launcher.

A cluster here is TensorFlow's own: a ClusterSpec (job -> task addresses) and, per process, TF_CONFIG
(`{"cluster": {...}, "task": {"type": ..., "index": ...}}`), read by TensorFlow's cluster resolvers. The
launcher invents no protocol: it starts one process per task with its TF_CONFIG and watches it.

One process per host, the same config everywhere (the multi-host recipe):

    TF_CONFIG='{"cluster": C, "task": {"type": "ps", "index": 0}}'      paradl-tf serve
    TF_CONFIG='{"cluster": C, "task": {"type": "worker", "index": 0}}'  paradl-tf serve
    TF_CONFIG='{"cluster": C, "task": {"type": "chief", "index": 0}}'   paradl-tf train --config=X \
                                                                        --set cluster.resolver=tf_config

Security: tf.distribute.Server serves unauthenticated gRPC that runs any graph it is sent, and it listens on
all interfaces whatever address the spec names (ServerDef has no host field). The local launcher therefore
runs the whole cluster, chief included, inside private user, network and PID namespaces (`unshare`): only
loopback exists there, and every process in them dies with the namespace. Where that is impossible it warns.

Modules: `spec` (specs, TF_CONFIG), `resolvers` (TensorFlow's resolvers, pods), `network` (isolation,
reachability), `processes` (lifetimes), `local` (the local cluster), `servers` (in-process, `serve`),
`data_service` (the tf.data service's dispatcher and data workers), `launcher` (the launching side), `deploy`
(TF_CONFIG per host, JobSet, Indexed Job, TFJob, Slurm), `hosts` (emulated hosts: network namespaces on a
private bridge).
None imports TensorFlow at import time: the launching process never needs it.
"""

from paradl_tf.errors import ClusterError
from paradl_tf.cluster.spec import (  # noqa: F401
    Spec, REQUIRED_JOBS, free_ports, local_cluster_spec, tf_config, TFConfig, parse_tf_config, check_jobs,
    clip_text, task_port,
)
from paradl_tf.cluster.resolvers import (  # noqa: F401
    cluster_resolver, job_counts, POD_RESOLVERS, POD_LABELS, COMPLETION_INDEX, pod_hostnames, pod_task,
    pod_tf_config, resolver_tf_config, resolver_spec, planned_spec,
)
from paradl_tf.cluster.network import (  # noqa: F401
    UNSHARE_ARGS, ClusterSecurityWarning, EXPOSED, wait_until_reachable, start_deadline, in_private_network, cluster_info,
    loopback_up,
    isolation_available, use_private_network, warn_exposed, isolated,
)
from paradl_tf.cluster.processes import (  # noqa: F401
    STOP_GRACE_S, die_with_parent, preexec_die_with_parent, describe_exit, kill_tree, is_alive, descendants,
    set_process_title, host_pids,
)
from paradl_tf.cluster.local import (  # noqa: F401
    Task, LocalCluster, LogFollower, make_tasks, write_json,
)
from paradl_tf.cluster.data_service import (  # noqa: F401
    SERVICE_JOBS, ADDRESS_ENV, service_spec, dispatcher_address, service_tasks, LocalService, local_service, resolve_address,
    check_dispatcher, check_address_service,
)
from paradl_tf.cluster.servers import (  # noqa: F401
    start_in_process_servers, serve,
)
from paradl_tf.cluster.launcher import (  # noqa: F401
    run_isolated, raise_on_interrupt, launch, finish_results, resume_hint, driver_main,
)
from paradl_tf.cluster.hosts import (  # noqa: F401
    Network, Host, Link, HostError, hosts_available, leftovers, sweep_stale,
)

"""Studio scale-out: one websocket gateway, jobs on a Ray Serve GPU deployment.

`layerdiffuse serve --cluster ADDRESS` (or `--cluster local`) runs the same gateway as
one machine does (the Krita protocol does not change); its jobs go to a Ray Serve
deployment with one replica per GPU, each running the same `backend.jobs.runner.run_job`
as the one-machine worker thread.

    config.py    ClusterConfig, ModelOptions: what `serve --cluster` asks for (no Ray)
    events.py    what a replica streams back for a job (no Ray)
    replica.py   GpuReplica: the deployment's class, one per GPU
    executor.py  ClusterExecutor: fair turns, streaming handles, cancel, one retry
    cluster.py   connect to (or start) Ray, deploy, describe, shut down
    status.py    the gateway's status board and `layerdiffuse cluster status`

Only this package imports Ray (`tests/test_dependencies.py`), and nothing on the
one-machine path imports it; this file imports nothing, so `config` can be read
without Ray installed.
"""

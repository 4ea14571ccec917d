#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start.sh (by its pid files) and wait until it is down,
# so that start.sh may run again at once.
STATE=${SDEXP_SLURM_STATE:-/tmp/sdexp-slurm}
pids=()
for pid_file in "$STATE"/run/slurmd.pid "$STATE"/run/slurmctld.pid "$STATE"/run/slurmdbd.pid \
                "$STATE"/mysql/mariadb.pid; do
  [ -f "$pid_file" ] && pids+=("$(cat "$pid_file")")
done
for name in munged slurmd slurmctld slurmdbd; do  # also those whose pid file is gone
  pids+=($(pgrep -x "$name"))
done
kill "${pids[@]}" 2>/dev/null
for _ in $(seq 100); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1
done
exit 0

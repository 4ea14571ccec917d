#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for the SLURM tests (run as root; CI calls it).
# munge, a private MariaDB (unix socket only) for accounting, slurmdbd, slurmctld and slurmd, with
# state under $SDEXP_SLURM_STATE. Stop it with tests/slurm/stop.sh.
set -euo pipefail
STATE=${SDEXP_SLURM_STATE:-/tmp/sdexp-slurm}
HOST=$(hostname -s)
mkdir -p "$STATE"/{ctld,spool,log,run,mysql} /etc/slurm /run/mysqld
chown mysql:mysql /run/mysqld "$STATE/mysql"  # MariaDB writes its pid and log there as mysql

# munge, as the munge user
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

# MariaDB for accounting: submitit polls job states with sacct
if [ ! -d "$STATE/db" ]; then
  mkdir -p "$STATE/db" && chown mysql:mysql "$STATE/db"
  mariadb-install-db --user=mysql --datadir="$STATE/db" --auth-root-authentication-method=socket >/dev/null
fi
db_up() { mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; }
db_pid=$(cat "$STATE/mysql/mariadb.pid" 2>/dev/null || true)
if ! db_up && ! { [ -n "$db_pid" ] && kill -0 "$db_pid" 2>/dev/null; }; then
  rm -f /run/mysqld/mysqld.sock  # left by a server that was killed: it would pass for a live one's
  setsid mariadbd --user=mysql --datadir="$STATE/db" --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file="$STATE/mysql/mariadb.pid" --log-error="$STATE/mysql/mariadb.log" </dev/null >/dev/null 2>&1 &
fi
for _ in $(seq 300); do db_up && break; sleep 0.1; done
db_up || { echo "slurm: MariaDB does not answer; its log: $STATE/mysql/mariadb.log" >&2; exit 1; }

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=sdexp_slurm_acct
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf

MEM=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=sdexp
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 50); do timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
timeout 10 sacctmgr -i -Q add cluster sdexp >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 150); do
  # up: idle, or running jobs (started again while jobs of an earlier start are in it)
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qxE 'idle|mixed|allocated'; then
    # submitit reads job states with sacct: without accounting a cancelled job would be waited on forever
    for _ in $(seq 20); do timeout 10 sacct -n -X >/dev/null 2>&1 && break; sleep 0.5; done
    if ! timeout 10 sacct -n -X >/dev/null; then
      echo "slurm: sacct does not answer (accounting is down); logs in $STATE/log" >&2
      exit 1
    fi
    echo "slurm: node $HOST up, accounting up"
    exit 0
  fi
  sleep 0.2
done
echo "slurm: the node did not come up; logs in $STATE/log" >&2
timeout 5 sinfo >&2 || true
exit 1

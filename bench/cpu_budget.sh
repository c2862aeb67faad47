#!/usr/bin/env bash
# Run a bench on a smaller CPU budget: the command and the local RabbitMQ node share a cgroup
# limited to CORES cores, so that a fast machine shows how a slower one would do when the load
# saturates it. The RabbitMQ node goes back to where it was when the command ends.
#
#   sudo bash bench/cpu_budget.sh 0.8 .venv/bin/python bench/dispatch.py --only workmesh
#
# Needs root and the cgroup "cpu" controller (cgroup v1 or v2). The limit is enforced every
# 2.5 ms, so a process that used up the budget waits at most that long; it is a model of a
# saturated slower machine, not of one whose every step is slower.
set -euo pipefail

usage() { echo "usage: $0 CORES COMMAND [ARGS...]   (e.g. $0 0.8 .venv/bin/python bench/dispatch.py)" >&2; exit 2; }
[ $# -ge 2 ] || usage
cores=$1; shift
[[ $cores =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage
period=2500
quota=$(awk -v c="$cores" -v p="$period" 'BEGIN { printf "%d", c * p }')
[ "$quota" -ge 1000 ] || { echo "$0: at least 0.4 cores (the kernel's smallest quota is 1 ms)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root to make a cgroup" >&2; exit 1; }

rabbit=$(rabbitmqctl eval 'os:getpid().' 2>/dev/null | tr -d '"') || true
[[ $rabbit =~ ^[0-9]+$ ]] || { echo "$0: no local RabbitMQ node answers rabbitmqctl" >&2; exit 1; }

name="workmesh-bench-$$"
if [ -d /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cgroup.procs ]; then  # cgroup v1
    group=/sys/fs/cgroup/cpu/$name
    home=/sys/fs/cgroup/cpu$(awk -F: '$2 == "cpu" || $2 ~ /(^|,)cpu(,|$)/ { print $3; exit }' "/proc/$rabbit/cgroup")
    mkdir "$group"
    echo "$period" > "$group/cpu.cfs_period_us"
    echo "$quota" > "$group/cpu.cfs_quota_us"
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then  # v2
    group=/sys/fs/cgroup/$name
    home=/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3; exit }' "/proc/$rabbit/cgroup")
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
    mkdir "$group"
    echo "$quota $period" > "$group/cpu.max"
else
    echo "$0: no cgroup cpu controller here" >&2; exit 1
fi

cleanup() {
    echo "$rabbit" > "$home/cgroup.procs" 2>/dev/null || echo "$0: could not move RabbitMQ ($rabbit) back to $home" >&2
    # The command's last processes may still be exiting; the group goes once they have.
    for _ in $(seq 50); do rmdir "$group" 2>/dev/null && return; sleep 0.1; done
    echo "$0: $group is still in use; remove it with rmdir once empty" >&2
}
trap cleanup EXIT
echo "$rabbit" > "$group/cgroup.procs"
echo "cpu_budget: $cores cores for RabbitMQ (pid $rabbit) and: $*" >&2
# A subshell that joins the group first, so the command and its children start inside it.
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$group" "$@"

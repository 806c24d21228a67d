#!/usr/bin/env bash
# Which physical cores the server's and the load generator's CPU lists share (SMT siblings):
# a server "pinned to 16 CPUs" whose hyperthread siblings run the load generator has far less
# than 16 cores' worth of front-end time. Usage: bench/cpu_topology.sh SERVER_CPUS CLIENT_CPUS
# (taskset-style lists, e.g. 0-15 16-63). Prints one summary line.
# bench/cpu_topology.sh --split N: two CPU lists, "SERVER CLIENT", the server's being every
# hardware thread of N whole physical cores and the client's every other CPU, e.g.
#   read SERVER_CPUS CLIENT_CPUS < <(bash bench/cpu_topology.sh --split 16)
expand() {  # 0-3,8 -> 0 1 2 3 8
  local part
  for part in ${1//,/ }; do
    if [[ $part == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}
core_of() {  # the physical core id of CPU $1 (package:core), or the CPU itself if unknown
  local t=/sys/devices/system/cpu/cpu$1/topology
  if [ -r "$t/core_id" ]; then echo "$(cat "$t/physical_package_id"):$(cat "$t/core_id")"; else echo "cpu$1"; fi
}
if [ "${1:-}" = --split ]; then  # N whole physical cores for the server, the rest for the client
  n=$2; declare -A taken=(); server=(); client=(); cores=0
  for d in /sys/devices/system/cpu/cpu[0-9]*; do echo "${d##*cpu}"; done | sort -n > /tmp/.cpus.$$
  while read -r c; do
    k=$(core_of "$c")
    if [ -n "${taken[$k]:-}" ]; then
      if [ "${taken[$k]}" = s ]; then server+=("$c"); else client+=("$c"); fi
    elif [ "$cores" -lt "$n" ]; then taken[$k]=s; server+=("$c"); cores=$((cores + 1))
    else taken[$k]=c; client+=("$c"); fi
  done < /tmp/.cpus.$$
  rm -f /tmp/.cpus.$$
  (IFS=,; echo "${server[*]} ${client[*]}")
  exit 0
fi
server=$(for c in $(expand "$1"); do core_of "$c"; done | sort -u)
client=$(for c in $(expand "$2"); do core_of "$c"; done | sort -u)
shared=$(comm -12 <(echo "$server") <(echo "$client") | grep -c .)
echo "cpu topology: server CPUs $1 on $(echo "$server" | grep -c .) physical cores," \
     "client CPUs $2 on $(echo "$client" | grep -c .); shared physical cores: $shared;" \
     "threads per core: $(lscpu 2>/dev/null | awk -F: '/Thread\(s\) per core/ {gsub(/ /,"",$2); print $2}')"

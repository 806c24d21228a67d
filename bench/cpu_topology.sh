#!/usr/bin/env bash
# Which physical cores the server's and the load generator's CPU lists share (SMT siblings):
# a server "pinned to 16 CPUs" whose hyperthread siblings run the load generator has far less
# than 16 cores' worth of front-end time. Usage: bench/cpu_topology.sh SERVER_CPUS CLIENT_CPUS
# (taskset-style lists, e.g. 0-15 16-63). Prints one summary line.
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
server=$(for c in $(expand "$1"); do core_of "$c"; done | sort -u)
client=$(for c in $(expand "$2"); do core_of "$c"; done | sort -u)
shared=$(comm -12 <(echo "$server") <(echo "$client") | grep -c .)
echo "cpu topology: server CPUs $1 on $(echo "$server" | grep -c .) physical cores," \
     "client CPUs $2 on $(echo "$client" | grep -c .); shared physical cores: $shared;" \
     "threads per core: $(lscpu 2>/dev/null | awk -F: '/Thread\(s\) per core/ {gsub(/ /,"",$2); print $2}')"

#!/bin/bash
# perf-stat-echo.sh NAME CONNS SIZE SECS -- server argv...   : perf stat of the pinned server under a pinned client
name=$1; conns=$2; size=$3; secs=$4; shift 5
port=$((20000 + RANDOM % 20000))
taskset -c 0 "$@" --listen 127.0.0.1:$port >/tmp/srv.$name.log 2>&1 &
spid=$!
sleep 0.5
perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -p $spid -o /tmp/perf.$name.txt &
ppid=$!
taskset -c 1 "$(dirname "$0")/../target/release/ringport" bench echo --json --target 127.0.0.1:$port --conns $conns --size $size --duration $secs > /tmp/cli.$name.json 2>/dev/null
kill -INT $ppid; wait $ppid
kill -INT $spid; wait $spid
msgs=$(python3 -c "import json;d=json.load(open('/tmp/cli.$name.json'));print(d.get('messages') or d.get('msgs') or d)")
echo "$name msgs=$msgs"
grep -E "task-clock|context|sys_enter|migr" /tmp/perf.$name.txt

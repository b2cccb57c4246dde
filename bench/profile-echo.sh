#!/bin/bash
# profile-echo.sh NAME CONNS SIZE SECS -- server argv... : perf record (cpu-clock) of the pinned server under a pinned client
name=$1; conns=$2; size=$3; secs=$4; shift 5
port=$((20000 + RANDOM % 20000))
taskset -c 0 "$@" --listen 127.0.0.1:$port >/tmp/srv.$name.log 2>&1 &
spid=$!
sleep 0.5
taskset -c 1 "$(dirname "$0")/../target/release/ringport" bench echo --json --target 127.0.0.1:$port --conns $conns --size $size --duration $secs > /tmp/cli.$name.json 2>/dev/null &
cpid=$!
sleep 1.5
perf record -F 4999 -e cpu-clock -g -p $spid -o /tmp/perf.$name.data -- sleep $((secs-2)) 2>/dev/null >/dev/null
wait $cpid
kill -INT $spid; wait $spid
python3 -c "import json;d=json.load(open('/tmp/cli.$name.json'));print('$name', d['messages'], d['msgs_per_s'])"

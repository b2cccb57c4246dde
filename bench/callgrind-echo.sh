#!/bin/bash
# callgrind-echo.sh LABEL CONNS SIZE SECS [CACHE] -- server argv... : user-space instructions per message under callgrind
label=$1; conns=$2; size=$3; secs=$4; cache=${5:-no}; shift 6
port=$((20000 + RANDOM % 20000))
out=/tmp/cg.$label
rm -f $out.*
taskset -c 0 valgrind --tool=callgrind --cache-sim=$cache --compress-strings=no --callgrind-out-file=$out.%p "$@" --listen 127.0.0.1:$port >/tmp/cgsrv.$label.log 2>&1 &
vpid=$!
for i in $(seq 50); do ss -ltnH "sport = :$port" | grep -q . && break; sleep 0.2; done
taskset -c 1 "$(dirname "$0")/../target/release/ringport" bench echo --json --target 127.0.0.1:$port --conns $conns --size $size --duration 1 >/dev/null 2>&1
callgrind_control -z $vpid >/dev/null 2>&1
taskset -c 1 "$(dirname "$0")/../target/release/ringport" bench echo --json --target 127.0.0.1:$port --conns $conns --size $size --duration $secs > /tmp/cgcli.$label.json 2>/dev/null
callgrind_control -d $vpid >/dev/null 2>&1
sleep 0.5
kill -INT $vpid; wait $vpid 2>/dev/null
msgs=$(python3 -c "import json;print(json.load(open('/tmp/cgcli.$label.json'))['messages'])")
f=$(ls -t $out.* | grep -v "\.[0-9]*$" | head -1); [ -z "$f" ] && f=$(ls -S $out.* | head -1)
# the dump after -z has suffix .N ; pick the largest dump file with a number suffix >= 1
best=""; bestn=0
for x in $out.*; do n=$(grep -m1 "^summary:\|^totals:" $x | awk '{print $2}'); [ -n "$n" ] && [ "$n" -gt "$bestn" ] 2>/dev/null && { best=$x; bestn=$n; }; done
echo "$label msgs=$msgs file=$best"
# (inclusive: a dump taken after `-z` attributes every self cost to `clone`)
callgrind_annotate --inclusive=yes --threshold=99 --auto=no $best 2>/dev/null | head -80 > /tmp/cgann.$label.txt
python3 - "$best" "$msgs" <<'PY'
import sys,re
f,m=sys.argv[1],int(sys.argv[2])
ev=None
for line in open(f):
    if line.startswith('events:'): ev=line.split()[1:]
    if line.startswith('summary:') or line.startswith('totals:'):
        vals=[int(x) for x in line.split()[1:]]
        print(' '.join(f'{e}={v/m:.0f}/msg' for e,v in zip(ev,vals)))
        break
PY

#!/usr/bin/env python3
"""Paired ratios from an `echo-matrix --json-out F.json` run.

    python3 bench/rounds.py F.json [BASE]

For each cell and server: the median over rounds of each round's ratio to
BASE (default tokio-mt) of messages/s, server CPU per message, p50 and p99,
with the per-round ratios in brackets. BENCHMARKS.md's "paired" figures are
these. Runs that failed are skipped."""
import json,sys,collections,statistics as S
d=json.load(open(sys.argv[1])); base=sys.argv[2] if len(sys.argv)>2 else 'tokio-mt'
by=collections.defaultdict(dict)
for s in d['samples']:
    if s.get('status')!='ok' or s.get('pass','timing')!='timing': continue
    by[(s['conns'],s['size'],s['round'])][s['server']]=s
cells=sorted({(c,z) for c,z,_ in by})
servers=[]
for s in d['samples']:
    if s['server'] not in servers: servers.append(s['server'])
def get(s,k):
    return s['client'][k] if k in s['client'] else s[k]
for c,z in cells:
    print(f"{c}x{z}")
    rs=sorted(r for (cc,zz,r) in by if (cc,zz)==(c,z))
    for sv in servers:
        if sv==base: continue
        out=[]
        for k in ('msgs_per_s','server_cpu_us_per_msg','p50_us','p99_us'):
            v=[get(by[(c,z,r)][sv],k)/get(by[(c,z,r)][base],k) for r in rs if sv in by[(c,z,r)] and base in by[(c,z,r)]]
            if v: out.append(f"{k.split('_')[0] if k!='server_cpu_us_per_msg' else 'cpu'} {S.median(v):.2f} [{' '.join(f'{x:.2f}' for x in v)}]")
        print(f"  {sv:18s} " + " | ".join(out))

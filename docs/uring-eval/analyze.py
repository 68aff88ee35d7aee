import csv, statistics as st, sys
rows=list(csv.DictReader(open(sys.argv[1])))
rows=[r for r in rows if r['round']!='round']
NT=5000  # tar entries
modes=['native','legacy','legacy2','uring']
wls=['tar_only','tar_sync','cat_warm','rm_only','rm_sync','getxattr','openclose']
def agg(v):
    v=sorted(v); 
    return st.median(v), v[0], v[-1], len(v)
print("| workload | mode | n | median | min | max | daemon CPU ms (median) | vol cs (median) | invol cs (median) |")
print("|---|---|---|---|---|---|---|---|---|")
for w in wls:
    for m in modes:
        rs=[r for r in rows if r['mode']==m and r['workload']==w]
        if not rs: continue
        if w in('getxattr','openclose'):
            val=[float(r['extra']) for r in rs]; unit='µs/op'
        else:
            val=[float(r['wall_s']) for r in rs]; unit='s'
        med,lo,hi,n=agg(val)
        c=st.median(int(r['dcpu_ms']) for r in rs); v=st.median(int(r['vcs']) for r in rs); nv=st.median(int(r['nvcs']) for r in rs)
        print(f"| {w} | {m} | {n} | {med:.3f} {unit} | {lo:.3f} | {hi:.3f} | {c:.0f} | {v:.0f} | {nv:.0f} |")
print()
print("Per tar entry (tar_sync window, medians):")
print("| mode | daemon CPU µs/entry | vol cs/entry | invol cs/entry | total cs/entry |")
print("|---|---|---|---|---|")
for m in modes[1:]:
    rs=[r for r in rows if r['mode']==m and r['workload']=='tar_sync']
    if not rs: continue
    c=st.median(int(r['dcpu_ms'])*1000/NT for r in rs)
    v=st.median(int(r['vcs'])/NT for r in rs); nv=st.median(int(r['nvcs'])/NT for r in rs)
    t=st.median((int(r['vcs'])+int(r['nvcs']))/NT for r in rs)
    print(f"| {m} | {c:.0f} | {v:.2f} | {nv:.2f} | {t:.2f} |")
print()
print("Per latency op (medians): daemon CPU µs/op and cs/op")
for w,n in (('getxattr',int(sys.argv[2]) if len(sys.argv)>2 else 100000),('openclose',int(sys.argv[3]) if len(sys.argv)>3 else 50000)):
    for m in modes[1:]:
        rs=[r for r in rows if r['mode']==m and r['workload']==w]
        if not rs: continue
        c=st.median(int(r['dcpu_ms'])*1000/n for r in rs); t=st.median((int(r['vcs'])+int(r['nvcs']))/n for r in rs)
        print(f"  {w} {m}: cpu {c:.1f} µs/op, cs {t:.2f}/op")
print()
print("Per-round tar_sync wall (s), in round order:")
for m in modes:
    print(" ", m, [round(float(r['wall_s']),2) for r in rows if r['mode']==m and r['workload']=='tar_sync'])

#!/bin/bash
# usage: bench.sh ROUNDS OUTCSV
set -u
cd /tmp/uring-eval
export LD_LIBRARY_PATH=/opt/fuse318/lib/x86_64-linux-gnu:/opt/liburing215/lib
BIN=/opt/fuse318/bin/passthrough_hp
FM=/opt/fuse318/bin/fusermount3
ROUNDS=${1:-7}; OUT=${2:-results.csv}
NLAT=${NLAT:-100000}; NOC=${NOC:-50000}
DPID=
echo "round,mode,workload,wall_s,dcpu_ms,vcs,nvcs,threads,extra" >> $OUT

now() { date +%s.%N; }
# daemon snapshot: "cpu_ns vcs nvcs nthreads"
snap() {
  [ -z "$DPID" ] && { echo "0 0 0 0"; return; }
  local c=0 v=0 nv=0 n=0 t
  for t in /proc/$DPID/task/*; do
    read a b x < $t/schedstat; c=$((c+a))
    v=$((v+$(awk '/^voluntary_ctxt/{print $2}' $t/status)))
    nv=$((nv+$(awk '/^nonvoluntary_ctxt/{print $2}' $t/status)))
    n=$((n+1))
  done
  echo "$c $v $nv $n"
}
bycomm() {  # per-thread-name cpu ms
  [ -z "$DPID" ] && return
  for t in /proc/$DPID/task/*; do read a b x < $t/schedstat; echo "$(cat $t/comm) $a"; done |
    awk '{s[$1]+=$2} END{for(k in s) printf "%s=%.0fms ", k, s[k]/1e6}'
}
rec() { # round mode wl t0 t1 snapA snapB extra
  local r=$1 m=$2 w=$3 t0=$4 t1=$5; shift 5
  local a=($1 $2 $3 $4) ; local b=($5 $6 $7 $8); shift 8
  echo "$r,$m,$w,$(echo "$t1 - $t0" | bc -l | sed 's/^\./0./'),$(( (b[0]-a[0])/1000000 )),$((b[1]-a[1])),$((b[2]-a[2])),${b[3]},$*" >> $OUT
}
mount_fuse() { # mode round
  local opts="--foreground --nopassthrough"
  [ $1 = uring ] && opts="$opts -o io_uring"
  [ $1 = legacy2 ] && opts="$opts --nosplice --num-threads 2"
  $BIN $opts mnt/src fuse > logs/$1.$2.log 2>&1 &
  DPID=$!
  for i in $(seq 100); do mountpoint -q fuse && break; sleep 0.1; done
  mountpoint -q fuse || { echo "MOUNT FAILED $1 $2" | tee -a logs/errors; cat logs/$1.$2.log; exit 1; }
  ls fuse > /dev/null
  if [ $1 = uring ]; then
    grep -q fuse-ring /proc/$DPID/task/*/comm || echo "round $2: NO fuse-ring threads" | tee -a logs/errors
    grep -i 'failed' logs/$1.$2.log && echo "round $2: uring log failure" | tee -a logs/errors
  fi
}
umount_fuse() {
  local r=$1 m=$2
  echo "$r $m $(bycomm)" >> logs/bycomm.txt
  $FM -u fuse || echo "umount fail $r $m" | tee -a logs/errors
  for i in $(seq 100); do kill -0 $DPID 2>/dev/null || break; sleep 0.1; done
  kill -0 $DPID 2>/dev/null && { echo "daemon $DPID did not exit $r $m" | tee -a logs/errors; kill $DPID; }
  wait $DPID 2>/dev/null; echo "daemon exit rc=$? $r $m" >> logs/exits
  DPID=
}
one() { # round mode
  local r=$1 m=$2 base
  if [ $m = native ]; then base=mnt/native; DPID=; else mount_fuse $m $r; base=fuse; fi
  local d=$base/r$r
  mkdir -p $d; sync
  # A: tar x + sync
  local s0=$(snap) t0=$(now); tar xf t.tar -C $d || echo "tar err $r $m" >> logs/errors
  local t1=$(now); sync; local t2=$(now) s1=$(snap)
  rec $r $m tar_only $t0 $t1 $s0 $s1 ""
  rec $r $m tar_sync $t0 $t2 $s0 $s1 ""
  # C1: warm cat (one warm-up pass, then timed)
  find $d -type f -print0 | xargs -0 cat > /dev/null
  s0=$(snap); t0=$(now); find $d -type f -print0 | xargs -0 cat > /dev/null; t1=$(now); s1=$(snap)
  rec $r $m cat_warm $t0 $t1 $s0 $s1 ""
  # B: latency
  touch $base/lat.f
  s0=$(snap); t0=$(now); u=$(./lat getxattr $base/lat.f $NLAT); t1=$(now); s1=$(snap)
  rec $r $m getxattr $t0 $t1 $s0 $s1 "$u"
  s0=$(snap); t0=$(now); u=$(./lat openclose $base/lat.f $NOC); t1=$(now); s1=$(snap)
  rec $r $m openclose $t0 $t1 $s0 $s1 "$u"
  # B2: two concurrent getxattr clients (aggregate throughput)
  s0=$(snap); t0=$(now); ./lat getxattr $base/lat.f $NLAT > logs/p1 & LP=$!; ./lat getxattr $base/lat.f $NLAT > logs/p2; wait $LP; t1=$(now); s1=$(snap)
  rec $r $m getxattr_par2 $t0 $t1 $s0 $s1 "$(cat logs/p1)/$(cat logs/p2)"
  # C2: rm -rf + sync
  s0=$(snap); t0=$(now); rm -rf $d; t1=$(now); sync; t2=$(now); s1=$(snap)
  rec $r $m rm_only $t0 $t1 $s0 $s1 ""
  rec $r $m rm_sync $t0 $t2 $s0 $s1 ""
  [ $m != native ] && umount_fuse $r $m
  return 0
}
for r in $(seq 1 $ROUNDS); do
  M=(${MODES:-native legacy uring legacy2}); L=${#M[@]}; k=$((r % L)); order=""
  for j in $(seq 0 $((L-1))); do order="$order ${M[$(( (k+j) % L ))]}"; done
  echo "round $r: $order  load=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a logs/rounds
  for m in $order; do one $r $m; done
done

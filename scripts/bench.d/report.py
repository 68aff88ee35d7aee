#!/usr/bin/env python3
"""Render scripts/bench results (key<TAB>value lines) as one markdown table plus notes."""

import argparse
import json
import math

ap = argparse.ArgumentParser()
ap.add_argument("--results", required=True)
ap.add_argument("--notes", required=True)
ap.add_argument("--header", required=True)
ap.add_argument("--data-bytes", type=int, required=True)
ap.add_argument("--fio-bytes", type=int, required=True)
ap.add_argument("--fio-runtime", type=int, required=True)
ap.add_argument("--backing", default="?", help="what the figures were measured on")
ap.add_argument("--codec", default="?", help="the codec of the in-process compression figures")
ap.add_argument("--fixed-block", type=int, default=64 * 1024,
                help="the fixed-block policy's block size: the average chunk size of a default store")
ap.add_argument("--no-main", action="store_true", help="only the chunk-size study ran")
a = ap.parse_args()

R = {}
for line in open(a.results):
    line = line.rstrip("\n")
    if "\t" in line:
        k, v = line.split("\t", 1)
        R[k] = v
notes = [l.rstrip("\n") for l in open(a.notes) if l.strip()]
checks = []  # findings that look wrong, listed first under the table

MiB = 1024 * 1024
GiB = 1024 * MiB
N = a.data_bytes
FS = ["dedupfs", "ext4", "bindfs"]


def num(key):
    v = R.get(key)
    if v in (None, "", "ERR"):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def err(key):
    return R.get(key) == "ERR"


def stats(step):
    v = R.get(f"dedupfs.stats.{step}")
    return json.loads(v) if v else None


def load(key):
    try:
        return json.loads(R[key]) if key in R else None
    except ValueError:
        return None


cdc = load("cdc")
cdc_one = load("cdc_onefile")  # the tree's archive as one file
cdc_tree = load("cdc_tree")  # the tree's files, each chunked on its own (sizes only)


def field(d, k):
    """d[k] as a number, or None when d or the field is missing (older dedupfs, failed step)."""
    if not d:
        return None
    v = d.get(k)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def diff(a, b):
    return None if a is None or b is None else a - b


def div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def phys(fs, step):
    """Bytes stored by fs after step: dedupfs physical_bytes, else du of the directory."""
    if fs == "dedupfs":
        s = stats(step)
        return s["physical_bytes"] if s else None
    return num(f"{fs}.du.{step}")


def delta(fs, a_step, b_step):
    x, y = phys(fs, a_step), phys(fs, b_step)
    return None if x is None or y is None else y - x


def fmt(v, kind):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if kind == "gbps":
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if kind == "iops":
        return f"{v:,.0f}"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "mib":
        return f"{v / MiB:,.1f}"
    if kind == "x":
        return f"{v:.3g}"
    if kind == "pct":
        return f"{v:.1f}"
    if kind == "int":
        return f"{v:,.0f}"
    return str(v)


def ratio(x, y):
    if x is None or y is None or isinstance(x, str) or isinstance(y, str) or y == 0:
        return "–"
    r = x / y
    return f"{r:.2f}" if r >= 0.01 else f"{r:.2g}"


def human(b):
    if b is None:
        return "–"
    if abs(b) >= GiB:
        return f"{b / GiB:.2f} GiB"
    return f"{b / MiB:.1f} MiB"


def packs(s):
    n = field(s, "packs")
    return "–" if n is None else f"{n:,.0f}"


def store_cell(step, extra=""):
    s = stats(step)
    if not s:
        return "–"
    cell = (f"phys {human(s['physical_bytes'])}, stored {human(field(s, 'stored_bytes'))}, "
            f"on disk {human(field(s, 'disk_bytes'))}, logical {human(s['logical_bytes'])}, "
            f"ratio {s['dedup_ratio']:.2f}, {s['chunk_count']:,} chunks, {packs(s)} packs")
    return cell + extra


def gbps(key, nbytes):
    if err(key):
        return "ERR"
    s = num(key)
    return nbytes / s / 1e9 if s else None


def seconds(key):
    return "ERR" if err(key) else num(key)


def iops(key):
    return "ERR" if err(key) else num(key)


rows = []  # (step, unit, {fs: value}, inproc value, inproc label, kind, store cell)


def row(step, unit, vals, kind, inproc=None, inproc_label="", store="–"):
    rows.append((step, unit, vals, kind, inproc, inproc_label, store))


cdc1 = field(cdc, "cdc_blake3_1t_gbps")
cdc2 = field(cdc, "cdc_blake3_2t_gbps")
b3 = field(cdc, "blake3_gbps")
codec = (cdc or {}).get("codec", a.codec)
cdc_label = f"{fmt(cdc1, 'gbps')} (1 thread; 2 threads pipelined {fmt(cdc2, 'gbps')})" if cdc else "–"
if field(cdc, "cdc_blake3_codec_1t_gbps") is not None:
    cdc_label += (f"; + {codec} per new chunk: 1 thread {fmt(field(cdc, 'cdc_blake3_codec_1t_gbps'), 'gbps')}, "
                  f"2 threads {fmt(field(cdc, 'cdc_blake3_codec_2t_gbps'), 'gbps')}")
cdc_rate_note = ""
if cdc and cdc.get("rate_bytes", cdc["bytes"]) < cdc["bytes"]:
    cdc_rate_note = f" (in-process rates timed on the first {human(cdc['rate_bytes'])} of the data)"
b3_label = f"{fmt(b3, 'gbps')} (blake3 alone, 1 MiB pieces)" if cdc else "–"
size = f"{N / GiB:g} GiB"

row(f"sequential write, {size} unique data (dd bs=1M conv=fsync)", "GB/s",
    {f: gbps(f"{f}.write", N) for f in FS}, "gbps", cdc1, cdc_label,
    store_cell("write", f" (in-process: {cdc['chunks']:,})" if cdc else ""))
row(f"same {size} again under another name (dedup path)", "GB/s",
    {f: gbps(f"{f}.rewrite", N) for f in FS}, "gbps", cdc1, cdc_label, store_cell("rewrite"))
row("↳ files the store is made of after that write (find STORE -type f \\| wc -l, unmounted)", "files",
    {"dedupfs": num("dedupfs.store_files.write")}, "int",
    store=f"{packs(stats('write'))} packs" if stats("write") else "–")
row("↳ physical bytes added by that second copy", "MiB",
    {f: delta(f, "write", "rewrite") for f in FS}, "mib")


def wchar_delta(fs, a_key, b_key):
    x, y = num(f"{fs}.wchar.{a_key}"), num(f"{fs}.wchar.{b_key}")
    return None if x is None or y is None else y - x


row("↳ bytes the daemon wrote during that second copy (/proc/PID/io wchar, fresh daemon)", "MiB",
    {"dedupfs": num("dedupfs.wchar.rewrite"), "bindfs": num("bindfs.wchar.rewrite")}, "mib")
row("sequential read, cold (fresh mount, drop_caches), dd bs=1M", "GB/s",
    {f: gbps(f"{f}.read_cold", N) for f in FS}, "gbps", b3, b3_label)
row("sequential read, warm (same mount, again)", "GB/s",
    {f: gbps(f"{f}.read_warm", N) for f in FS}, "gbps", b3, b3_label)
row(f"cp of the {size} file inside the volume, then fsync", "s",
    {f: seconds(f"{f}.cp") for f in FS}, "s", store=store_cell("cp"))

fio_desc = f"{a.fio_bytes / MiB:g} MiB file, direct=1 psync QD1, {a.fio_runtime} s"
row(f"fio random 4 KiB writes, dedupfs: CDC chunks, the default policy ({fio_desc}, end_fsync)", "IOPS",
    {f: iops(f"{f}.randwrite") for f in FS}, "iops", store=store_cell("randwrite"))

def iops_wall(key):
    if err(key):
        return "ERR"
    b, w = num(f"{key}.bytes"), num(f"{key}.wall")
    return b / 4096 / w if b and w else None


def write_amp(fss, key, layout_step, write_step, wchar_before, wchar_after):
    """(net physical bytes added, bytes the daemon wrote) ÷ bytes fio wrote, per fs."""
    wa_phys, wa_daemon = {}, {}
    for f in fss:
        wb = num(f"{f}.{key}.bytes")
        d = delta(f, layout_step, write_step)
        wa_phys[f] = d / wb if d is not None and wb else None
        if f != "ext4":
            w = wchar_delta(f, wchar_before, wchar_after)
            wa_daemon[f] = w / wb if w is not None and wb else None
    return wa_phys, wa_daemon


FSYNC_ROW = "↳ the same counting the final fsync (4 KiB writes ÷ wall time of the fio process)"
WA_PHYS_ROW = "↳ write amplification: net physical bytes added ÷ bytes fio wrote"
WA_DAEMON_ROW = "↳ write amplification: bytes the daemon wrote ÷ bytes fio wrote"
row(FSYNC_ROW, "IOPS", {f: iops_wall(f"{f}.randwrite") for f in FS}, "iops")
wa_phys, wa_daemon = write_amp(FS, "randwrite", "fio_layout", "randwrite", "fio_before", "fio_after")
row(WA_PHYS_ROW, "×", wa_phys, "x")
row(WA_DAEMON_ROW, "×", wa_daemon, "x")
row(f"fio random 4 KiB reads, dedupfs: CDC chunks ({fio_desc}, fresh mount)", "IOPS",
    {f: iops(f"{f}.randread") for f in FS}, "iops")

# The same pair on a second file laid out alike, with the fixed-block policy: dedupfs only.
FIXED_BLOCK = a.fixed_block  # fixed blocks are the store's average chunk size (the bench inits the default)
fixed_ran = "dedupfs.randwrite_fixed" in R
if fixed_ran:
    row(f"fio random 4 KiB writes, fixed {FIXED_BLOCK // 1024} KiB blocks "
        "(xattr user.dedupfs.chunking=fixed; same layout, data and offsets)", "IOPS",
        {"dedupfs": iops("dedupfs.randwrite_fixed")}, "iops", store=store_cell("randwrite_fixed"))
    row(FSYNC_ROW, "IOPS", {"dedupfs": iops_wall("dedupfs.randwrite_fixed")}, "iops")
    fwa_phys, fwa_daemon = write_amp(["dedupfs"], "randwrite_fixed", "fixed_layout", "randwrite_fixed",
                                     "fixed_before", "fixed_after")
    row(WA_PHYS_ROW, "×", fwa_phys, "x")
    row(WA_DAEMON_ROW, "×", fwa_daemon, "x")
    row("fio random 4 KiB reads, fixed blocks (fresh mount)", "IOPS",
        {"dedupfs": iops("dedupfs.randread_fixed")}, "iops")

tree_n = R.get("tree.entries", "0")
tree_extra = ""
# Before: after the gc that ran just before the tar x (compacting the fio steps' dead bytes).
st, sb = stats("tar"), stats("pre_tar") or stats("randwrite_fixed") or stats("randwrite")
# The tree's logical bytes: the regular files' sizes in the archive (cdc_rate --tar), else what
# the store's logical bytes grew by.
tree_logical = field(cdc_tree, "unit_bytes")
tree_disk = tree_stored = None
if st and sb:
    dl = st["logical_bytes"] - sb["logical_bytes"]
    dp = st["physical_bytes"] - sb["physical_bytes"]
    tree_logical = tree_logical if tree_logical is not None else dl
    tree_stored = diff(field(st, "stored_bytes"), field(sb, "stored_bytes"))
    tree_disk = diff(field(st, "disk_bytes"), field(sb, "disk_bytes"))
    tree_extra = f"; tree alone: logical {human(dl)}, phys {human(dp)}" + (
        f", ratio {dl / dp:.2f}" if dp > 0 else "") + (
        f", stored {human(tree_stored)}, on disk {human(tree_disk)}")
tree_inproc = field(cdc_tree, "compressed_bytes")
row(f"tar x of /usr/share ({int(tree_n):,} entries, "
    f"{int(R.get('tree.bytes', 0)) / MiB:.0f} MiB archive), then syncfs", "s",
    {f: seconds(f"{f}.tar") for f in FS}, "s", store=store_cell("tar", tree_extra))
row("↳ tar x until written back and durable (dedupfs: tar, syncfs, then umount until the daemon "
    "exits; ext4: = above; bindfs: + syncfs of its backing directory)", "s",
    {f: seconds(f"{f}.tar_durable") for f in FS}, "s")
tree_cells = {"dedupfs": div(tree_disk, tree_logical)}
for f in ("ext4", "bindfs"):
    tree_cells[f] = div(delta(f, "randwrite", "tar"), tree_logical)
tree_label = "–"
if tree_inproc is not None:
    tree_label = (f"{fmt(div(tree_inproc, tree_logical), 'x')} ({human(tree_inproc)}: the tree's "
                  f"{cdc_tree['distinct_chunks']:,} distinct chunks, each compressed alone with {codec}; "
                  f"logical {human(tree_logical)})")
row("↳ the tree on disk ÷ its logical bytes (dedupfs: disk_bytes added by the tar x; ext4, bindfs: "
    "du added; in-process: its chunks compressed one by one) — dedupfs ÷ in-process = disk_bytes "
    "÷ in-process compressed", "×", tree_cells, "x",
    inproc=div(tree_inproc, tree_logical), inproc_label=tree_label,
    store=(f"tree: on disk {human(tree_disk)}, stored {human(tree_stored)}, in-process compressed "
           f"{human(tree_inproc)}, logical {human(tree_logical)}: disk ÷ in-process "
           f"{ratio(tree_disk, tree_inproc)}, disk ÷ logical {ratio(tree_disk, tree_logical)}"))

# Per entry of that tar x (issue 10): the FUSE daemons' CPU time and context switches, from just
# before the tar to just after its syncfs; dedupfs: FUSE requests, and CPU until it exited.
entries = num("tree.entries")
clk = num("clk_tck") or 100.0


def cpu_secs(before_after):
    """(user, system) seconds between two "UTIME STIME" tick readings ("U0 S0 U1 S1")."""
    v = before_after.split() if before_after else []
    if len(v) != 4:
        return None
    try:
        u0, s0, u1, s1 = map(float, v)
    except ValueError:
        return None
    return (u1 - u0) / clk, (s1 - s0) / clk


def per_entry(v, scale=1.0):
    return None if v is None or not entries else v / entries * scale


tar_cpu, tar_cpu_exit, tar_cs, cpu_cell = {}, {}, {}, []
for f in ("dedupfs", "bindfs"):
    c = cpu_secs(R.get(f"{f}.tar.ticks"))
    if c:
        tar_cpu[f] = per_entry(c[0] + c[1], 1e6)
        cpu_cell.append(f"{f}: user {fmt(per_entry(c[0], 1e6), 'x')} + system "
                        f"{fmt(per_entry(c[1], 1e6), 'x')} µs")
    cs = R.get(f"{f}.tar.ctxsw", "").split()
    if len(cs) == 2:
        tar_cs[f] = per_entry(float(cs[1]) - float(cs[0]))
ticks_before = R.get("dedupfs.tar.ticks", "").split()[:2]
ce = cpu_secs(" ".join(ticks_before) + " " + R.get("dedupfs.tar.ticks_exit", "")) if ticks_before else None
if ce:
    tar_cpu_exit["dedupfs"] = per_entry(ce[0] + ce[1], 1e6)


def requests(key):
    """(total, {op: n}) of the FUSE requests dedupfs served during a step, from the mounted
    store's stats before and after it under key; None when unknown."""
    st = load(key) or {}
    r0 = (st.get("before") or {}).get("requests")
    r1 = (st.get("after") or {}).get("requests")
    if r0 is None or r1 is None:
        return None
    ops = {k: n - r0["by_op"].get(k, 0) for k, n in r1["by_op"].items()}
    return r1["total"] - r0["total"], {k: n for k, n in ops.items() if n > 0}


def requests_text(key, per, unit):
    """"N requests per UNIT (op n, ..)", the ops by falling count; "" when unknown."""
    q = requests(key)
    if q is None or not per:
        return ""
    ops = sorted(q[1].items(), key=lambda kv: -kv[1])
    by_op = ", ".join(f"{k} {n / per:.2f}" if n / per < 10 else f"{k} {n / per:,.0f}"
                      for k, n in ops if n / per >= 0.005)
    total = q[0] / per
    return (f"FUSE requests per {unit}: {fmt(total, 'x' if total < 100 else 'int')}"
            + (f" ({by_op})" if by_op else ""))


tar_req, req_cell = {}, "–"
q = requests("dedupfs.tar.stats")
if q is not None:
    tar_req["dedupfs"] = per_entry(q[0])
    req_cell = requests_text("dedupfs.tar.stats", entries, "entry") or "–"
elif "dedupfs.tar.stats" in R:
    notes.append("dedupfs stats --json of the mounted store reported no request counts (a dedupfs "
                 "without them): the requests rows are \"–\"")
row(f"↳ daemon CPU per entry during the tar x (user + system, /proc/PID/stat, from before the tar "
    f"to after its syncfs; {fmt(entries, 'int')} entries); target ≤ 150 µs", "µs", tar_cpu, "x",
    store="; ".join(cpu_cell) or "–")
row("↳ the same until the daemon exited at the unmount (background write-back and the final "
    "commit included)", "µs", tar_cpu_exit, "x")
row("↳ daemon context switches per entry during the tar x (voluntary + nonvoluntary, summed over "
    "/proc/PID/task/*/status; threads that exited in between are not counted)", "switches",
    tar_cs, "x")
row("↳ FUSE requests per entry during the tar x (dedupfs stats --json of the mounted store: "
    "requests served); target ≤ 7", "requests", tar_req, "x", store=req_cell)

# The tree's archive written as one file (each target: a fresh store or directory).
one_n = field(cdc_one, "bytes") or num("tree.bytes")
one_inproc2 = field(cdc_one, "cdc_blake3_codec_2t_gbps")
one_label = "–"
if cdc_one and one_inproc2 is not None:
    one_label = (f"{fmt(one_inproc2, 'gbps')} (FastCDC + blake3 + {codec} per new chunk, 2 threads; "
                 f"1 thread {fmt(field(cdc_one, 'cdc_blake3_codec_1t_gbps'), 'gbps')}; without "
                 f"compression 1 thread {fmt(field(cdc_one, 'cdc_blake3_1t_gbps'), 'gbps')})")
so = stats("onefile")
one_inproc = field(cdc_one, "compressed_bytes")
one_cell = "–"
if so:
    one_cell = (f"stored {human(field(so, 'stored_bytes'))}, on disk {human(field(so, 'disk_bytes'))}, "
                f"phys {human(so['physical_bytes'])}, logical {human(so['logical_bytes'])}: "
                f"stored ÷ logical {ratio(field(so, 'stored_bytes'), so['logical_bytes'])}, "
                f"disk ÷ logical {ratio(field(so, 'disk_bytes'), so['logical_bytes'])}; "
                f"{so['chunk_count']:,} chunks, {packs(so)} packs; du -sb of the store "
                f"{human(num('dedupfs.du_sb.onefile'))}")
row(f"compressible data written as one file: the tree's tar archive "
    f"({(one_n or 0) / MiB:.0f} MiB), dd bs=1M conv=fsync, fresh store / directory", "GB/s",
    {f: gbps(f"{f}.onefile", one_n) for f in FS} if one_n else {}, "gbps", one_inproc2, one_label,
    one_cell)
one_label2 = "–"
if one_inproc is not None:
    one_label2 = (f"{fmt(div(one_inproc, one_n), 'x')} ({human(one_inproc)}: its "
                  f"{cdc_one['distinct_chunks']:,} distinct chunks, each compressed alone with {codec})")
row("↳ that file on disk ÷ its logical bytes (dedupfs: disk_bytes; ext4, bindfs: du; in-process: "
    "its chunks compressed one by one)", "×",
    {"dedupfs": div(field(so, "disk_bytes"), one_n),
     **{f: div(phys(f, "onefile"), one_n) for f in ("ext4", "bindfs")}}, "x",
    inproc=div(one_inproc, one_n), inproc_label=one_label2)

# Delete half then gc (dedupfs only, fresh store).
gw, gdel, ga = stats("gc_written"), stats("gc_deleted"), stats("gc_after")
deleted = num("gc.deleted_bytes")
gc_fall = div(diff(field(gw, "disk_bytes"), field(ga, "disk_bytes")), deleted)
du_w, du_d, du_a = num("dedupfs.du_sb.gc_written"), num("dedupfs.du_sb.gc_deleted"), num("dedupfs.du_sb.gc_after")
du_fall = div(diff(du_w, du_a), deleted)
gc_rep = load("dedupfs.gc.report")
gc_bits = []
if gc_rep:
    for k, v in gc_rep.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "bytes_per_chunk_index":
            gc_bits.append(f"{k} {human(v) if 'bytes' in k else f'{v:,}'}")
gc_cell = "–"
if gw or ga:
    gc_cell = (f"disk_bytes {human(field(gw, 'disk_bytes'))} → {human(field(gdel, 'disk_bytes'))} "
               f"(deleted) → {human(field(ga, 'disk_bytes'))} (gc); du -sb {human(du_w)} → "
               f"{human(du_d)} → {human(du_a)}; deleted {human(deleted)}; "
               f"stored after gc {human(field(ga, 'stored_bytes'))}, {packs(ga)} packs"
               + (f"; gc: {', '.join(gc_bits)}" if gc_bits else ""))
gc_files = R.get("gc.file_bytes")
gc_n = R.get("gc.files", "16")
gc_desc = f"{gc_n} files × {human(float(gc_files))}" if gc_files else f"{gc_n} files"
row(f"delete half then gc: {gc_desc} of unique incompressible data written one after another, "
    "every second file deleted, unmount, dedupfs gc: fall of disk_bytes ÷ bytes deleted", "%",
    {"dedupfs": None if gc_fall is None else 100 * gc_fall}, "pct", store=gc_cell)
row("↳ the same, measured with du -sb STORE", "%",
    {"dedupfs": None if du_fall is None else 100 * du_fall}, "pct")
row("↳ time of that dedupfs gc (unmounted)", "s", {"dedupfs": seconds("dedupfs.gc")}, "s")

# Small files and metadata (issue 10): git, the warm re-read, cargo build. Medians of the timed runs.
reps = int(num("timed_reps") or 3)


def median(keys, conv):
    """Median of conv(key) over keys (float cells); ERR if every run failed, None if none ran."""
    v = [conv(k) for k in keys]
    ok = sorted(x for x in v if isinstance(x, float))
    if not ok:
        return "ERR" if "ERR" in v else None
    m = len(ok) // 2
    return ok[m] if len(ok) % 2 else (ok[m - 1] + ok[m]) / 2


def runs(keys, conv, kind):
    """The timed runs one by one, for the last column."""
    v = [conv(k) for k in keys if k in R]
    return ", ".join(fmt(x, kind) for x in v)


git_files, git_bytes, git_repo = num("git.files"), num("git.bytes"), num("git.repo_bytes")
git_desc = (f"{git_files:,.0f} files, {human(git_bytes)}; a {human(git_repo)} bare repository in one "
            "pack, one commit" if git_files else "not available")
status_cell = []
for f in FS:
    n_changed = num(f"{f}.status.changed")
    if n_changed:
        checks.append(f"{f}: git status in the fresh clone listed {n_changed:,.0f} changed paths")
        status_cell.append(f"{f}: {n_changed:,.0f} paths listed as changed")
    if any(f"{f}.status.{n}" in R for n in range(1, reps + 1)):
        status_cell.append(f"{f} runs " + runs([f"{f}.status.{n}" for n in range(1, reps + 1)], seconds, "s"))
status_req = requests_text("dedupfs.status.stats", reps, "run")
if status_req:
    status_cell.append(f"dedupfs: {status_req}")
row(f"git clone --no-hardlinks of a local repository ({git_desc}) into the volume, then syncfs", "s",
    {f: seconds(f"{f}.clone") for f in FS}, "s",
    store=requests_text("dedupfs.clone.stats", git_files, "file (until durable)") or "–")
row("↳ git clone until durable (dedupfs: + dedupfs sync; bindfs: + syncfs of its backing "
    "directory; ext4: = above); target ≤ 2x ext4", "s",
    {f: seconds(f"{f}.clone_durable") for f in FS}, "s")
row(f"↳ git status in that clone, warm (after one untimed run; median of {reps}); target ≤ 1.5x ext4",
    "s", {f: median([f"{f}.status.{n}" for n in range(1, reps + 1)], seconds) for f in FS}, "s",
    store="; ".join(status_cell) or "–")
row("↳ rm -rf of that clone, then syncfs", "s", {f: seconds(f"{f}.rm") for f in FS}, "s",
    store=requests_text("dedupfs.rm.stats", git_files, "file (until durable)") or "–")
row("↳ rm -rf until durable (as for the clone); target ≤ 3x ext4", "s",
    {f: seconds(f"{f}.rm_durable") for f in FS}, "s")

rb = num("reread.bytes")
if rb:
    rb_note = "" if rb >= GiB else f" (not 1 GiB: the {human(rb)} data set of this mode)"
    row(f"warm re-read of a {human(rb)} file{rb_note}: written (dd conv=fsync), made durable, read "
        f"once, then read with dd bs=1M, median of {reps}; target ≥ 0.5x ext4 (its page cache)", "GB/s",
        {f: median([f"{f}.reread.{n}" for n in range(1, reps + 1)], lambda k: gbps(k, rb)) for f in FS},
        "gbps", store="; ".join(
            [f"{f} runs " + runs([f"{f}.reread.{n}" for n in range(1, reps + 1)], lambda k: gbps(k, rb), "gbps")
             for f in FS if f"{f}.reread.1" in R]
            + [f"dedupfs: {x}" for x in [requests_text("dedupfs.reread.stats", reps, "timed read")] if x]) or "–")

if "cargo.reps" in R:
    creps = int(num("cargo.reps") or 3)
    ckeys = {f: [f"{f}.cargo.{n}" for n in range(1, creps + 1)] for f in FS}
    cargo_runs = "; ".join(f"{f} runs {runs(ckeys[f], seconds, 's')} s" for f in ("ext4", "dedupfs")
                           if any(k in R for k in ckeys[f]))
    sc = stats("cargo")
    cargo_store = (f"after run 1: phys {human(sc['physical_bytes'])}, on disk {human(field(sc, 'disk_bytes'))}, "
                   f"logical {human(sc['logical_bytes'])}, ratio {sc['dedup_ratio']:.2f}" if sc else "")
    row(f"cargo build --release --offline of this repository, CARGO_TARGET_DIR on the volume (a fresh "
        f"directory / store each run), median of {creps} runs alternating ext4 and dedupfs; target "
        "≤ 1.05x ext4", "s", {f: median(ckeys[f], seconds) for f in ("ext4", "dedupfs")}, "s",
        store="; ".join(x for x in (cargo_runs, cargo_store) if x) or "–")
elif not a.no_main:
    notes.append("cargo build: not run (--cargo-build off, the default with --quick)")

row(f"peak daemon RSS during the {size} write (VmHWM)", "MiB",
    {f: (num(f"{f}.hwm_kib") * 1024 if num(f"{f}.hwm_kib") is not None else None)
     for f in ("dedupfs", "bindfs")}, "mib",
    store=f"store on disk at the end (du): {human(num('dedupfs.final_du'))}")

# ---- table
hdr = ["step", "unit", "dedupfs", "ext4", "bindfs", "in-process FastCDC + blake3",
       "dedupfs ÷ ext4", "dedupfs ÷ bindfs", "dedupfs ÷ in-process", "dedupfs store after the step"]
out = []
out.append(open(a.header).read().rstrip("\n"))
if not a.no_main:  # --chunk-study only: no main table
    out.append("")
    out.append(f"**Backing: {a.backing}** (dedupfs stores, native ext4 directory and bindfs's backing "
               "directory alike)")
    out.append("")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "|".join(["---"] * 2 + ["---:"] * 7 + ["---"]) + "|")
    for step, unit, vals, kind, inproc, inproc_label, store in rows:
        d = vals.get("dedupfs")
        cells = [step, unit] + [fmt(vals.get(f), kind) for f in FS]
        cells.append(inproc_label if inproc is not None else "–")
        cells += [ratio(d, vals.get("ext4")), ratio(d, vals.get("bindfs")), ratio(d, inproc), store]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("Ratios are dedupfs ÷ reference: above 1 is better for GB/s and IOPS, worse for s, MiB, ×, "
               "µs, switches and requests. "
               "GB/s = 1e9 bytes/s; one run per cell unless the row says median (in-process: median of "
               f"{cdc['reps'] if cdc else '?'} after a warm-up pass{cdc_rate_note}). "
               "bindfs runs with its defaults: single-threaded, and it clears O_DIRECT (its fio figures "
               "go through the page cache). "
               "ext4 and bindfs \"physical\" figures are `du` of the directory. "
               "dedupfs stats: phys = unique chunk bytes before compression, stored = live chunks as "
               "stored (compressed), on disk = the store's data files incl. dead pack bytes; \"–\" = "
               "not reported by this dedupfs (or the step failed).")
    if fixed_ran:
        out.append("")
        out.append("dedupfs chunking policy on random 4 KiB I/O, fixed blocks ÷ CDC chunks (same data, same "
                   f"offsets): write IOPS {ratio(iops('dedupfs.randwrite_fixed'), iops('dedupfs.randwrite'))}, "
                   f"with the final fsync {ratio(iops_wall('dedupfs.randwrite_fixed'), iops_wall('dedupfs.randwrite'))}, "
                   f"daemon bytes written {ratio(fwa_daemon.get('dedupfs'), wa_daemon.get('dedupfs'))}, "
                   f"read IOPS {ratio(iops('dedupfs.randread_fixed'), iops('dedupfs.randread'))}.")

# ---- sanity checks on dedupfs (the git rows above added theirs)
sw, sr, sc, sl, swr = stats("write"), stats("rewrite"), stats("cp"), stats("fio_layout"), stats("randwrite")
if sw:
    if sw["logical_bytes"] != N:
        checks.append(f"after the write, logical_bytes = {sw['logical_bytes']:,}, expected {N:,}")
    if cdc and sw["chunk_count"] != cdc["distinct_chunks"]:
        checks.append(f"after the write the store holds {sw['chunk_count']:,} chunks; in-process FastCDC "
                      f"of the same data gives {cdc['distinct_chunks']:,} distinct chunks")
    if abs(sw["physical_bytes"] - N) > N * 0.001:
        checks.append(f"after writing {N:,} unique bytes, physical_bytes = {sw['physical_bytes']:,}")
if sw and sr:
    added = sr["physical_bytes"] - sw["physical_bytes"]
    if added > N * 0.01:
        checks.append(f"the second copy of the same data added {human(added)} of physical bytes (dedup missed)")
    if abs(sr["dedup_ratio"] - 2.0) > 0.02:
        checks.append(f"dedup ratio after two copies is {sr['dedup_ratio']:.3f}, expected 2.00")
if sr and sc:
    added = sc["physical_bytes"] - sr["physical_bytes"]
    if added > N * 0.01:
        checks.append(f"cp inside the volume added {human(added)} of physical bytes (expected ~0: by reference)")
if sl:
    want = N + a.fio_bytes
    if sl["logical_bytes"] != want:
        checks.append(f"after deleting the two copies and writing the fio file, logical_bytes = "
                      f"{sl['logical_bytes']:,}, expected {want:,}")
    if sw and abs(sl["physical_bytes"] - sw["physical_bytes"] - a.fio_bytes) > a.fio_bytes * 0.01:
        checks.append(f"the {human(a.fio_bytes)} fio file of unique data added "
                      f"{human(sl['physical_bytes'] - sw['physical_bytes'])} of physical bytes")
if sl and swr and swr["logical_bytes"] != sl["logical_bytes"]:
    checks.append(f"random overwrites changed logical_bytes from {sl['logical_bytes']:,} to {swr['logical_bytes']:,}")
sfl, sfw = stats("fixed_layout"), stats("randwrite_fixed")
if swr and sfl:
    # The policy took effect: the second copy of the fio data is cut in exactly fio_bytes ÷ block
    # chunks, none shared with the CDC copy.
    want = a.fio_bytes // FIXED_BLOCK
    got = sfl["chunk_count"] - swr["chunk_count"]
    if got != want:
        checks.append(f"the fixed-block copy of the fio file added {got:,} chunks, expected {want:,} "
                      f"({human(a.fio_bytes)} ÷ {FIXED_BLOCK // 1024} KiB)")
    if sfl["logical_bytes"] != swr["logical_bytes"] + a.fio_bytes:
        checks.append(f"the fixed-block copy of the fio file changed logical_bytes from "
                      f"{swr['logical_bytes']:,} to {sfl['logical_bytes']:,}")
if sfl and sfw and sfw["logical_bytes"] != sfl["logical_bytes"]:
    checks.append(f"random overwrites of the fixed-block file changed logical_bytes from "
                  f"{sfl['logical_bytes']:,} to {sfw['logical_bytes']:,}")
if gw and ga and deleted is not None and ga["logical_bytes"] != gw["logical_bytes"] - deleted:
    checks.append(f"gc step: logical_bytes went from {gw['logical_bytes']:,} to {ga['logical_bytes']:,} "
                  f"after deleting {deleted:,.0f} bytes")
for f in FS:
    for k in (("write", "rewrite", "read_cold", "read_warm", "cp", "randwrite", "randread",
               "randwrite_fixed", "randread_fixed", "tar", "tar_durable", "onefile", "gc",
               "gc.verify", "clone", "clone_durable", "rm", "rm_durable")
              + tuple(f"{step}.{n}" for step in ("status", "reread", "cargo") for n in range(1, reps + 1))):
        if err(f"{f}.{k}"):
            checks.append(f"{f}: step {k} failed (see notes)")
# ---- the chunk-size study (scripts/bench, bench_chunk_study): one column per average chunk size
study_sizes = [int(x) for x in R.get("study.sizes", "").split()]


def kib(avg):
    return f"{avg // 1024} KiB" if avg % 1024 == 0 else f"{avg} B"


def study_stats(avg, step):
    return load(f"study.{avg}.stats.{step}")


def study_meta(avg, step):
    """Allocated bytes of meta.redb + index.redb after step (either missing: None)."""
    m, i = num(f"study.{avg}.meta.{step}"), num(f"study.{avg}.index.{step}")
    return None if m is None or i is None else m + i


def study_pair_delta(avg, i, f):
    """What release 2 of pair i added to field f of the store's stats (None if unknown)."""
    return diff(field(study_stats(avg, f"p{i}.r2"), f), field(study_stats(avg, f"p{i}.r1"), f))


def study_pair_disk(avg, i):
    """Bytes on disk release 2 added: pack bytes + metadata files' allocated bytes."""
    packs_ = study_pair_delta(avg, i, "disk_bytes")
    meta = diff(study_meta(avg, f"p{i}.r2"), study_meta(avg, f"p{i}.r1"))
    return None if packs_ is None or meta is None else packs_ + meta


def study_rounds():
    return range(1, int(num("study.reps") or 1) + 1)


def median_gbps(prefix, nbytes):
    """Median over the study's rounds of nbytes ÷ the seconds under prefix.N; ERR if all failed."""
    v = [gbps(f"{prefix}.{n}", nbytes) for n in study_rounds()]
    ok = sorted(x for x in v if isinstance(x, float))
    if not ok:
        return "ERR" if "ERR" in v else None
    m = len(ok) // 2
    return ok[m] if len(ok) % 2 else (ok[m - 1] + ok[m]) / 2


def spread(prefix, nbytes):
    """" (min–max)" of the rounds' rates when there are several, else ""."""
    ok = [x for x in (gbps(f"{prefix}.{n}", nbytes) for n in study_rounds()) if isinstance(x, float)]
    return f" ({min(ok):.3g}–{max(ok):.3g})" if len(ok) > 1 else ""


if study_sizes:
    ref = int(R.get("study.default_avg", 0) or 0)
    if ref not in study_sizes:
        ref = max(study_sizes)
    others = [s_ for s_ in study_sizes if s_ != ref]
    sbytes = num("study.bytes")
    pairs = sorted({int(k.split(".")[2]) for k in R if k.startswith("study.pair.")})
    srows = []  # (label, unit, {avg: value}, ext4 value, kind)
    rates = {}  # (avg, "write" | "read_cold"): the median rate, for the ratio columns
    ratio_vals = {}  # row index -> the values its ratio columns divide, where cells are text

    def srow(label, unit, vals, kind, ext4=None):
        srows.append((label, unit, vals, ext4, kind))

    def pct(x, y):
        d = div(x, y)
        return None if d is None else 100 * d

    sum_new = {s_: 0.0 for s_ in study_sizes}
    sum_disk = {s_: 0.0 for s_ in study_sizes}
    sum_logical, ext4_sum, pairs_done = 0.0, 0.0, 0
    for i in pairs:
        name, v1, v2 = (R.get(f"study.pair.{i}", "? ? ?").split() + ["?"] * 3)[:3]
        logical = num(f"study.pair.{i}.r2.bytes")
        files = num(f"study.pair.{i}.r2.files")
        desc = (f"{name} {v1} → {v2} ({fmt(files, 'int')} files, {human(logical)} unpacked)"
                if logical is not None else f"{name} {v1} → {v2} (not available)")
        new = {s_: pct(study_pair_delta(s_, i, "physical_bytes"), logical) for s_ in study_sizes}
        disk = {s_: pct(study_pair_disk(s_, i), logical) for s_ in study_sizes}
        meta = {s_: pct(diff(study_meta(s_, f"p{i}.r2"), study_meta(s_, f"p{i}.r1")), logical)
                for s_ in study_sizes}
        chunks = {s_: study_pair_delta(s_, i, "chunk_count") for s_ in study_sizes}
        ext4_add = diff(num(f"study.ext4.du.p{i}.r2"), num(f"study.ext4.du.p{i}.r1"))
        srow(f"{desc}, release 2 stored after release 1: share of its bytes that were new "
             "(unique chunk bytes added ÷ its logical bytes)", "%", new, "pct")
        srow("↳ bytes on disk added incl. metadata (packs + meta.redb + index.redb) ÷ its logical "
             "bytes (ext4: du added)", "%", disk, "pct", pct(ext4_add, logical))
        srow("↳ of which meta.redb + index.redb (allocated bytes; redb files grow in steps)", "%",
             meta, "pct")
        srow("↳ chunks added", "chunks", chunks, "int")
        if logical is not None:  # the pair was stored: add it to the totals
            sum_logical += logical
            pairs_done += 1
            ext4_sum = None if ext4_add is None or ext4_sum is None else ext4_sum + ext4_add
            for s_ in study_sizes:
                d_new, d_disk = study_pair_delta(s_, i, "physical_bytes"), study_pair_disk(s_, i)
                sum_new[s_] = None if d_new is None or sum_new[s_] is None else sum_new[s_] + d_new
                sum_disk[s_] = None if d_disk is None or sum_disk[s_] is None else sum_disk[s_] + d_disk
        for s_ in study_sizes:
            got = field(study_stats(s_, f"p{i}.r2"), "logical_bytes")
            was = field(study_stats(s_, f"p{i}.r1"), "logical_bytes")
            if logical is not None and got is not None and was is not None and got - was != logical:
                checks.append(f"chunk study, {kib(s_)}, {name} {v2}: the store's logical bytes grew by "
                              f"{got - was:,.0f}, the tree holds {logical:,.0f}")
    if pairs_done > 1:
        srow(f"all {pairs_done} pairs together: new ÷ logical", "%",
             {s_: pct(sum_new[s_], sum_logical) for s_ in study_sizes}, "pct")
        srow("↳ on disk incl. metadata ÷ logical", "%",
             {s_: pct(sum_disk[s_], sum_logical) for s_ in study_sizes}, "pct", pct(ext4_sum, sum_logical))

    size = human(sbytes) if sbytes else "?"
    nrounds = len(study_rounds())
    rounds = f"median of {nrounds} rounds (min–max)" if nrounds > 1 else "one round"
    for what, label in (("write", f"sequential write, {size} of unique data (dd bs=1M conv=fsync), "
                                  f"fresh store; {rounds}"),
                        ("read_cold", "sequential read of that file, cold (fresh mount, drop_caches)")):
        cells = {}
        for s_ in study_sizes:
            m = median_gbps(f"study.{s_}.{what}", sbytes)
            cells[s_] = m if not isinstance(m, float) else f"{fmt(m, 'gbps')}{spread(f'study.{s_}.{what}', sbytes)}"
            rates[(s_, what)] = m
        e = median_gbps(f"study.ext4.{what}", sbytes)
        srow(label, "GB/s", cells, "gbps",
             e if not isinstance(e, float) else f"{fmt(e, 'gbps')}{spread(f'study.ext4.{what}', sbytes)}")
        ratio_vals[len(srows) - 1] = {s_: rates[(s_, what)] for s_ in study_sizes}
    srow("↳ in-process FastCDC + blake3 + the codec per new chunk, 2 threads (same data)", "GB/s",
         {s_: field(load(f"study.{s_}.cdc"), "cdc_blake3_codec_2t_gbps") for s_ in study_sizes}, "gbps")
    srow("↳ in-process FastCDC + blake3, 1 thread", "GB/s",
         {s_: field(load(f"study.{s_}.cdc"), "cdc_blake3_1t_gbps") for s_ in study_sizes}, "gbps")

    def per_gib(avg, what):
        st = study_stats(avg, "large.1")
        phys_ = field(st, "physical_bytes")
        if what == "chunks":
            v = field(st, "chunk_count")
        else:
            files_ = ("meta", "index") if what == "both" else (what,)
            v = 0
            for f_ in files_:
                d = diff(num(f"study.{avg}.{f_}.large.1"), num(f"study.{avg}.{f_}.empty.1"))
                v = None if d is None or v is None else v + d
        return None if v is None or not phys_ else v * GiB / phys_

    srow("chunks per GiB of unique data", "chunks",
         {s_: per_gib(s_, "chunks") for s_ in study_sizes}, "int")
    srow("meta.redb + index.redb per GiB of unique data (allocated bytes, growth from an empty "
         "store, measured on the large file)", "MiB", {s_: per_gib(s_, "both") for s_ in study_sizes},
         "mib")
    srow("↳ meta.redb", "MiB", {s_: per_gib(s_, "meta") for s_ in study_sizes}, "mib")
    srow("↳ index.redb", "MiB", {s_: per_gib(s_, "index") for s_ in study_sizes}, "mib")
    srow("↳ per chunk", "B", {s_: div(per_gib(s_, "both"), per_gib(s_, "chunks"))
                              for s_ in study_sizes}, "int")
    def hwm(avg):
        v = [num(f"study.{avg}.hwm_kib.{n}") for n in study_rounds()]
        v = [x for x in v if x is not None]
        return max(v) * 1024 if v else None

    srow("peak daemon RSS during the write (VmHWM; the highest of the rounds)", "MiB",
         {s_: hwm(s_) for s_ in study_sizes}, "mib")

    for s_ in study_sizes:
        st = study_stats(s_, "large.1")
        if st and sbytes and abs(st["physical_bytes"] - sbytes) > sbytes * 0.001:
            checks.append(f"chunk study, {kib(s_)}: the large file of {sbytes:,.0f} unique bytes left "
                          f"physical_bytes = {st['physical_bytes']:,}")
        for k in (tuple(f"{w}.{n}" for w in ("write", "read_cold") for n in study_rounds())
                  + ("verify",) + tuple(f"p{i}.r{r}" for i in pairs for r in (1, 2))):
            if err(f"study.{s_}.{k}"):
                checks.append(f"chunk study, {kib(s_)}: step {k} failed (see notes)")

    params = {s_: R.get(f"study.{s_}.init", "") for s_ in study_sizes}
    hdr = (["measure", "unit"] + [kib(s_) for s_ in study_sizes] + ["ext4"]
           + [f"{kib(s_)} ÷ {kib(ref)}" for s_ in others])
    out.append("")
    out.append(f"## Chunk-size study: dedupfs at average chunk sizes {', '.join(kib(s_) for s_ in study_sizes)}")
    out.append("")
    out.append(f"**Backing: {a.backing}.** Each column: fresh stores made with `dedupfs init "
               "--avg-chunk N` (min = N/4, max = 4N), the store's default codec unless --compression. "
               "Release pairs: CPython 3.12 manylinux x86_64 wheels (pip download, pinned by sha256), "
               "unpacked, copied with `cp -a` one release after the other into one store; exact "
               "figures from `dedupfs stats --json` with the store unmounted. "
               f"The large file: {size} of unique, incompressible data in another fresh store. "
               f"Ratios: each size ÷ {kib(ref)} (the default of this dedupfs).")
    out.append("")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(hdr) - 2)) + "|")
    for idx, (label, unit, vals, ext4, kind) in enumerate(srows):
        cells = [label, unit] + [fmt(vals.get(s_), kind) for s_ in study_sizes] + [fmt(ext4, kind)]
        rv = ratio_vals.get(idx, vals)
        cells += [ratio(rv.get(s_), rv.get(ref)) for s_ in others]
        out.append("| " + " | ".join(cells) + " |")
    if any(params.values()):
        out.append("")
        out.append("Stores as `dedupfs init` made them: " + "; ".join(
            f"{kib(s_)}: {params[s_].split('(', 1)[-1].rstrip(') ') if '(' in params[s_] else '?'}"
            for s_ in study_sizes) + ".")

# ---- the remote-volume table (scripts/bench.d/garage.sh, bench_remote; issue 11 "Targets")
if "remote.data_bytes" in R:
    rn = num("remote.data_bytes")
    r2 = num("remote.second_bytes")
    tck = num("remote.clk_tck") or 100.0
    out.append("")
    out.append("## Remote volume (Garage)")
    out.append("")
    if "remote.skipped" in R:
        out.append(f"Skipped: {R['remote.skipped']}.")
    else:
        def mbps(key, nbytes):
            if err(key):
                return "ERR"
            t = num(key)
            return nbytes / t / 1e6 if t and nbytes else None

        def cpu(key, which):
            """CPU seconds of the daemon (which=0) or of garage (1) during the step under key."""
            v = R.get(f"{key}.cpu", "").split()
            return int(v[which]) / tck if len(v) == 2 else None

        def cpu_cell(key, which):
            c, t = cpu(key, which), num(key)
            if c is None:
                return None
            return f"{c:.2f}" + (f" ({100 * c / t:.0f} % of the wall time)" if t else "")

        def verdict(ok):
            return "–" if ok is None else ("met" if ok else "missed")

        def rat(x, y):
            return div(x, y) if isinstance(x, float) and isinstance(y, float) else None

        rrows = []  # (measure, unit, local, garage, ratio text, target, verdict)
        w_l, w_g = mbps("remote.local.write", rn), mbps("remote.garage.write", rn)
        rw = rat(w_g, w_l)
        rrows.append((f"sequential write of {human(rn)} of unique data (dd bs=1M conv=fsync) until "
                      "`dedupfs sync` returns (Garage: packs uploaded, metadata generation published)",
                      "MB/s", w_l, w_g, rw, "≥ 0.5x local", verdict(None if rw is None else rw >= 0.5)))
        rrows.append(("↳ until dd returned (its fsync: durable in the local store / journal)", "MB/s",
                      mbps("remote.local.write.fsync", rn), mbps("remote.garage.write.fsync", rn),
                      rat(mbps("remote.garage.write.fsync", rn), mbps("remote.local.write.fsync", rn)), "", ""))
        rrows.append(("↳ CPU time of the dedupfs daemon during the write until sync (utime + stime)", "s",
                      cpu_cell("remote.local.write", 0), cpu_cell("remote.garage.write", 0),
                      div(cpu("remote.garage.write", 0), cpu("remote.local.write", 0)), "", ""))
        rrows.append(("↳ CPU time of the garage server during it (it shares the two cores)", "s",
                      None, cpu_cell("remote.garage.write", 1), None, "report it", ""))

        def req(key, i):
            v = R.get(f"{key}.req", "").split()
            return int(v[i]) if len(v) == 2 else None

        rrows.append(("↳ S3 requests for pack objects during it, PUT / GET (garage's log)", "requests", None,
                      f"{req('remote.garage.write', 0)} / {req('remote.garage.write', 1)}"
                      if req("remote.garage.write", 0) is not None else None, None, "", ""))
        rc_l, rc_g = mbps("remote.local.read_cold", rn), mbps("remote.garage.read_cold", rn)
        rr = rat(rc_g, rc_l)
        rrows.append(("cold read of that file (dd bs=1M), fresh mount after drop_caches; Garage: a store "
                      "made by `dedupfs attach` (nothing downloaded), every byte fetched from the bucket",
                      "MB/s", rc_l, rc_g, rr, "≥ 0.5x local", verdict(None if rr is None else rr >= 0.5)))
        rrows.append(("↳ CPU time during it: dedupfs daemon", "s", cpu_cell("remote.local.read_cold", 0),
                      cpu_cell("remote.garage.read_cold", 0), None, "", ""))
        rrows.append(("↳ CPU time during it: garage server", "s", None,
                      cpu_cell("remote.garage.read_cold", 1), None, "", ""))
        gets = req("remote.garage.read_cold", 1)
        rrows.append(("↳ GET requests for pack objects during it (garage's log), and per MiB of the file", "requests", None,
                      f"{gets:,} ({gets / (rn / MiB):.2f} per MiB)" if gets is not None and rn else None,
                      None, "", ""))
        rca = mbps("remote.garage.read_cached", rn)
        rcr = rat(rca, rc_l)
        rrows.append(("cached read: Garage: the attached store mounted again, drop_caches, every byte "
                      "from its range cache on the local disk; local: the cold read above (its packs on "
                      "the same disk)", "MB/s", rc_l, rca, rcr, "same as local (taken as ≥ 0.9x)",
                      verdict(None if rcr is None else rcr >= 0.9)))
        gcached = cpu("remote.garage.read_cached", 1)
        rrows.append(("↳ CPU time during it: dedupfs daemon", "s", None,
                      cpu_cell("remote.garage.read_cached", 0), None, "", ""))
        rrows.append(("↳ CPU time of the garage server during it, and its GET requests for pack objects (≈ 0, 0: no network)",
                      "s", None, (f"{cpu_cell('remote.garage.read_cached', 1)}; "
                                  f"{req('remote.garage.read_cached', 1)} GET")
                      if cpu("remote.garage.read_cached", 1) is not None else None, None, "", ""))
        ra_l, ra_g = mbps("remote.local.read_again", rn), mbps("remote.garage.read_again", rn)
        rrows.append(("read again at once after the cold read, same mount (page cache, daemon cache)",
                      "MB/s", ra_l, ra_g, rat(ra_g, ra_l), "", ""))
        l0, l1 = load("remote.listing.before_second"), load("remote.listing.after_second")
        up = diff(field(l1, "bytes"), field(l0, "bytes"))
        pct2 = None if up is None or not r2 else 100 * up / r2
        objs2 = diff(field(l1, "objects"), field(l0, "objects"))
        rrows.append((f"a second volume (`init --remote --volume second`, same prefix) storing the same "
                      f"{human(r2)}, until sync and unmount: bytes it put in the bucket (listing before "
                      "and after) ÷ the bytes stored", "%", None, pct2, None, "< 1 %",
                      verdict(None if pct2 is None else pct2 < 1)))
        if up is not None:
            rrows.append(("↳ bytes and objects it put in the bucket", "MiB", None,
                          f"{up / MiB:,.1f} in {objs2:,.0f} objects", None, "", ""))
        lf = load("remote.listing.first")
        n_obj = field(lf, "objects")
        by = (lf or {}).get("by_dir", {})
        n_packs = (by.get("packs") or [0, 0])[0]
        per4 = None
        if n_obj is not None and rn:
            per4 = n_packs * (4 * GiB / rn) + (n_obj - n_packs)
        obj_cell = None
        if n_obj is not None:
            obj_cell = (f"{n_obj:,.0f} ({', '.join(f'{k} {v[0]:,}' for k, v in sorted(by.items()))}); "
                        f"≈ {per4:,.0f} for 4 GiB (pack objects scaled)" if per4 is not None else f"{n_obj:,.0f}")
        rrows.append((f"objects in the bucket for the {human(rn)} data set (after the first volume's "
                      "unmount, an S3 listing of the prefix)", "objects", None, obj_cell, None,
                      "a few hundred at most for 4 GiB (taken as ≤ 500)",
                      verdict(None if per4 is None else per4 <= 500)))
        if field(lf, "bytes") is not None and rn:
            rrows.append(("↳ their bytes ÷ the data set's", "x", None, f"{field(lf, 'bytes') / rn:.3f}",
                          None, "", ""))
        rrows.append(("`dedupfs attach` of the volume into a fresh store (nothing downloaded): time; "
                      "the store's size after it", "s", None,
                      f"{fmt(seconds('remote.attach'), 's')}; {human(num('remote.attach.du'))}"
                      if "remote.attach" in R else None, None, "", ""))
        rrows.append(("unmount of the Garage volume after its sync (publishes again if anything changed)",
                      "s", None, seconds("remote.garage.umount"), None, "", ""))

        out.append(f"**Backing: {a.backing}** (the local volume's store, the Garage volume's local "
                   "store, the attached store and Garage's data and metadata directories alike). "
                   f"{R.get('remote.garage_version', 'garage ?')}: one node on 127.0.0.1, sqlite "
                   "metadata, its defaults written out (no fsync of data or metadata, 1 MiB blocks "
                   "compressed with zstd level 1); the dedupfs volumes in its bucket with the default "
                   "pack size, the attached store with "
                   f"`--cache-disk-gib {R.get('remote.cache_gib', '?')}` (its range cache holds the "
                   "whole data set). MB/s = 1e6 bytes/s; one run per cell. Local first, then Garage, "
                   "in the same run.")
        out.append("")
        out.append("| measure | unit | local volume | Garage volume | Garage ÷ local | target | |")
        out.append("|---|---|---:|---:|---:|---|---|")
        for m, unit, lv, gv, rv, tgt, vd in rrows:
            kind = {"MB/s": "mbps", "%": "pct2", "x": "x", "s": "s"}.get(unit, "int")

            def cell(v):
                if v is None:
                    return "–"
                if isinstance(v, str):
                    return v
                if kind == "mbps":
                    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
                if kind == "pct2":
                    return f"{v:.2f}"
                return fmt(v, kind)
            rtext = "–" if rv is None else (f"{rv:.2f}" if rv >= 0.01 else f"{rv:.2g}")
            out.append(f"| {m} | {unit} | {cell(lv)} | {cell(gv)} | {rtext} | {tgt or '–'} | {vd or ''} |")
        su = load("remote.garage.stats.synced")
        nu = field((su or {}).get("remote"), "not_uploaded_bytes")
        if nu:
            checks.append(f"remote table: after `dedupfs sync` returned, stats shows {nu:,} bytes not uploaded")
        if req("remote.garage.read_cached", 1):
            checks.append(f"remote table: {req('remote.garage.read_cached', 1)} GET requests reached garage "
                          "during the read from the range cache (reads of cached data should not touch the "
                          f"network; garage CPU {gcached} s)")
        if err("remote.verify"):
            checks.append("remote table: the attached store's file differs from the data written")
        for k in ("local.write", "garage.write", "local.read_cold", "garage.read_cold",
                  "garage.read_cached", "attach", "second.write", "listing.first",
                  "listing.before_second", "listing.after_second"):
            if err(f"remote.{k}"):
                checks.append(f"remote table: step {k} failed (see notes)")

if checks or notes:
    out.append("")
    out.append("Checks and notes:")
    for c in checks:
        out.append(f"- CHECK: {c}")
    for n in notes:
        out.append(f"- {n}")
out.append("")
out.append(f"Total bench time: {float(R.get('elapsed', 'nan')):.0f} s.")
print("\n".join(out))

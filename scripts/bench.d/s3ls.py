#!/usr/bin/env python3
"""List the objects under a prefix of an S3-compatible bucket; print their count and bytes.

Used by scripts/bench (the remote-volume table, bench.d/garage.sh) to count what dedupfs put in
the bucket: standard library only (no SDK to install), ListObjectsV2 signed with AWS
Signature V4, path-style requests (Garage resolves no bucket.host names). Credentials, region
and endpoint come from the same variables dedupfs reads: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL.

Usage: s3ls.py BUCKET [PREFIX]   ->   {"objects": N, "bytes": B, "by_dir": {"packs": [N, B], ..}}
by_dir groups the keys by their first path component after PREFIX.
"""

import datetime
import hashlib
import hmac
import json
import os
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def get(endpoint, region, key_id, secret, bucket, query):
    """GET /BUCKET?query, signed (SigV4, service s3, empty payload); the response body."""
    u = urllib.parse.urlsplit(endpoint)
    host = u.netloc
    path = "/" + urllib.parse.quote(bucket, safe="")
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    # Canonical query: keys and values URI-encoded (RFC 3986, "~" kept), sorted by key.
    qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                  for k, v in sorted(query.items()))
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["GET", path, qs] + [f"{k}:{headers[k]}" for k in sorted(headers)]
                          + ["", signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(("AWS4" + secret).encode(), day)
    for part in (region, "s3", "aws4_request"):
        k = sign(k, part)
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{u.scheme}://{host}{path}?{qs}", headers={
        "x-amz-content-sha256": payload, "x-amz-date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                         f"SignedHeaders={signed}, Signature={signature}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[2])
    bucket = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) == 3 else ""
    env = os.environ
    try:
        endpoint, key_id, secret = env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    except KeyError as e:
        sys.exit(f"s3ls: {e.args[0]} is not set")
    region = env.get("AWS_REGION", "us-east-1")
    objects, total, by_dir, token = 0, 0, {}, None
    while True:
        q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            q["continuation-token"] = token
        root = ET.fromstring(get(endpoint, region, key_id, secret, bucket, q))
        for c in root.iter(NS + "Contents"):
            key, size = c.findtext(NS + "Key"), int(c.findtext(NS + "Size"))
            objects += 1
            total += size
            top = key[len(prefix):].lstrip("/").split("/", 1)[0]
            n, b = by_dir.get(top, (0, 0))
            by_dir[top] = (n + 1, b + size)
        if root.findtext(NS + "IsTruncated") != "true":
            break
        token = root.findtext(NS + "NextContinuationToken")
    print(json.dumps({"objects": objects, "bytes": total, "by_dir": by_dir}))


main()

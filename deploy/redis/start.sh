#!/bin/sh
# Fill in the Redis ACL template (deploy/redis/users.acl.in, generated from deploy/redis/acl.py),
# then run the given command, normally `redis-server --aclfile "$ACL_FILE" ...`. Docker compose and
# Kubernetes run it in the Redis image (POSIX sh and busybox awk); the local stack renders the same
# text in Python (deploy.redis.acl.render).
#
#   ACL_TEMPLATE  the template (default /etc/redis/acl/users.acl.in)
#   ACL_FILE      the filled-in file, mode 0600 (default /run/redis/users.acl: a tmpfs, please)
#   XERO_REDIS_PREFIX, REDIS_<ROLE>_PASSWORD  the values; each may come from the file named by
#                 <NAME>_FILE instead. A password must be set and free of spaces.
set -eu
template=${ACL_TEMPLATE:-/etc/redis/acl/users.acl.in}
out=${ACL_FILE:-/run/redis/users.acl}
umask 077
mkdir -p "$(dirname "$out")"
awk '
function value(name,   file, line) {
    if (name in ENVIRON) {
        line = ENVIRON[name]
    } else if ((name "_FILE") in ENVIRON) {
        file = ENVIRON[name "_FILE"]
        if ((getline line < file) <= 0) fail(name "_FILE: cannot read " file)
        close(file)
    } else {
        fail(name " is not set")
    }
    if (line ~ /[[:space:]]/) fail(name " must not contain spaces")
    if (name ~ /_PASSWORD$/ && line == "") fail(name " is empty")
    return line
}
function fail(message) {
    print "start.sh: " message > "/dev/stderr"
    failed = 1
    exit 1
}
/^#/ { next }
{
    rest = $0
    done = ""
    while (match(rest, /\$\{[A-Z_]+\}/)) {
        done = done substr(rest, 1, RSTART - 1) value(substr(rest, RSTART + 2, RLENGTH - 3))
        rest = substr(rest, RSTART + RLENGTH)
    }
    print done rest
}
' "$template" > "$out.tmp"
mv "$out.tmp" "$out"
exec "$@"

"""The release commands (:mod:`deepmetric.release`):

    deepmetric publish NAME [--remote R] [--git-remote origin] [--repo-dir .]        (build machine)
    deepmetric pull NAME --repo URL [--dest releases] [--remote R | --remote-url URL]  (inference host)
    deepmetric releases --repo URL [--json]

Refusals print what is wrong and exit non-zero: 2 the fetched bundle fails its checks (checksum mismatch),
3 a bad name, 4 unknown release, 5 git repository or DVC remote unreachable (or missing the release's files),
6 publish refused (uncommitted changes, stale pipeline, existing tag).
"""

from __future__ import annotations

import argparse
import json
import os

from deepmetric.cli.common import EXIT_BAD_INPUT, say

REPO_ENV = "DEEPMETRIC_RELEASE_REPO"
DEST_ENV = "DEEPMETRIC_RELEASES_DIR"


def register(sub) -> None:
    publish = sub.add_parser("publish", help="publish the committed pipeline state as a release (DVC remote + git tag)")
    publish.add_argument("name", help="release name = git tag, e.g. v3")
    publish.add_argument("--remote", default=None, help="DVC remote to push to (default: the DVC default remote)")
    publish.add_argument("--git-remote", default=None,
                         help="git remote to push the release commit and tag to (e.g. origin); default: none")
    publish.add_argument("--repo-dir", default=".", help="the repository (default: the current directory)")
    publish.add_argument("-m", "--message", default=None, help="tag message body (default: versions and metrics)")
    publish.set_defaults(handler=publish_cmd, hard_exit=True)

    pull = sub.add_parser("pull", help="fetch a release by name from the DVC remote, verify it, install it")
    pull.add_argument("name", help="release name (git tag), e.g. v3; the previous one to roll back")
    _repo_arg(pull)
    pull.add_argument("--dest", default=os.environ.get(DEST_ENV, "releases"),
                      help=f"folder holding pulled releases; DEST/current points at the last one [${DEST_ENV}, releases]")
    pull.add_argument("--remote", default=None, help="name of a DVC remote configured in the repository")
    pull.add_argument("--remote-url", default=None, help="DVC remote URL to fetch from (overrides the repository's)")
    pull.set_defaults(handler=pull_cmd, hard_exit=True)

    rel = sub.add_parser("releases", help="list the releases of a repository")
    _repo_arg(rel)
    rel.add_argument("--json", action="store_true", help="print the release records as JSON")
    rel.set_defaults(handler=releases_cmd)


def _repo_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get(REPO_ENV)
    p.add_argument("--repo", default=default, required=default is None,
                   help=f"git URL or path of the project repository [${REPO_ENV}]")


def _need_dvc() -> int:
    """0 when DVC is importable; else say which extra brings it (a `[serve]`-only host can serve, not pull)."""
    try:
        import dvc  # noqa: F401
    except ImportError:
        say("fetching releases needs DVC, which this environment lacks: install the host extra "
            "(pip install -c constraints.txt 'deepmetric[host]')")
        return EXIT_BAD_INPUT
    return 0


def _fail(e) -> int:
    say(str(e))
    return e.exit_code


def publish_cmd(args: argparse.Namespace) -> int:
    if code := _need_dvc():
        return code
    from deepmetric.release.publish import publish as run
    from deepmetric.release.record import ReleaseError, summary

    try:
        done = run(args.repo_dir, args.name, remote=args.remote, git_remote=args.git_remote, message=args.message)
    except ReleaseError as e:
        return _fail(e)
    r = done.record
    say(f"published release {summary(r)}")
    say(f"bundle pushed to DVC remote {r['remote']['name']} ({r['remote']['url']}); tag {r['name']} at "
        f"{done.commit[:12]}" + (f", pushed to {done.pushed_to}" if done.pushed_to else
                                 f" (local: `git push <remote> {r['name']}` makes it visible to hosts)"))
    print(json.dumps(r, indent=2, sort_keys=True))
    return 0


def pull_cmd(args: argparse.Namespace) -> int:
    if code := _need_dvc():
        return code
    from deepmetric.release.fetch import pull as run
    from deepmetric.release.record import ReleaseError, summary

    try:
        done = run(args.name, args.repo, args.dest, remote=args.remote, remote_url=args.remote_url)
    except ReleaseError as e:
        return _fail(e)
    say(f"release {summary(done.record)} verified (every sha256, the manifest git recorded) from {done.remote}")
    say(f"installed at {done.path}; {done.path.parent / 'current'} -> {done.name}")
    print(done.path)
    return 0


def releases_cmd(args: argparse.Namespace) -> int:
    if code := _need_dvc():
        return code
    from deepmetric.release.fetch import releases as run
    from deepmetric.release.record import ReleaseError, summary

    try:
        records = run(args.repo)
    except ReleaseError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
    else:
        for r in records:
            print(f"{r.get('created', '?')}  {summary(r)}")
    return 0


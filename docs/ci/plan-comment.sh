#!/usr/bin/env bash
# A CI step for a pull request to the repository that holds your groups, policies and
# services: plan the change against the federation and post the plan as a Markdown
# comment. A script, not a hosted service: run it from any CI (docs/gitops.md shows a
# GitHub Actions job that does).
#
# Needs: FEDERATION_URL and FEDERATION_TOKEN (an operator token; the plan writes
# nothing), optionally FEDERATION_CA; COMMENT_URL and COMMENT_TOKEN to post the comment
# (e.g. https://api.github.com/repos/OWNER/REPO/issues/N/comments and a GitHub token).
# Without COMMENT_URL the Markdown is printed.
#
# Exit status: 0 no changes or changes that keep every service placed (the merge may
# go on), 1 the plan failed or would leave a service without compliant room.
set -uo pipefail

DIR="${1:-.}"
PLAN_MD="$(mktemp)"
trap 'rm -f "$PLAN_MD"' EXIT

federation plan -f "$DIR" --prune -o markdown >"$PLAN_MD"
code=$?
case "$code" in
  0) verdict="No changes." ;;
  2) verdict="Changes; every service keeps compliant room." ;;
  3) verdict="**Blocked:** this change would leave a service without compliant room." ;;
  *) verdict="**The plan failed** (exit $code): see the job log." ;;
esac
printf '\n%s\n' "$verdict" >>"$PLAN_MD"

if [[ -n "${COMMENT_URL:-}" ]]; then
  python3 -c 'import json,sys; print(json.dumps({"body": open(sys.argv[1]).read()}))' "$PLAN_MD" |
    curl -sS --fail -X POST -H "Authorization: Bearer ${COMMENT_TOKEN:?}" \
      -H "Content-Type: application/json" --data-binary @- "$COMMENT_URL" >/dev/null
else
  cat "$PLAN_MD"
fi

[[ "$code" == 0 || "$code" == 2 ]]

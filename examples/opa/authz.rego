# xgate opa policy example (docs/policies.md, "opa"): the input document is
# Kong's OPA plugin's, so this file works with Kong too.
package xgate.authz

default allow := false

# Anyone may read.
allow if input.request.http.method in {"GET", "HEAD"}

# Admins may do anything.
allow if "admins" in input.consumer.groups

# A consumer may create orders in their own name (include_parsed_json_body).
allow if {
	input.request.http.method == "POST"
	input.request.http.parsed_body.owner == input.consumer.username
}

default who := "anonymous"

who := input.consumer.username

# The object form: headers for the upstream on allow; a status, headers and
# a message for the client on deny.
decision := {"allow": true, "headers": {"x-authz-policy": "xgate.authz"}} if allow

decision := {
	"allow": false,
	"status": 403,
	"headers": {"x-authz-reason": "not-allowed"},
	"message": sprintf("%s may not %s %s", [who, input.request.http.method, input.request.http.path]),
} if not allow

#!/bin/bash
# A deployment script written against Octopus's bash helpers, the way its
# documentation shows them: it must run unchanged.
set -euo pipefail

# It's a good idea to copy the value into a variable to avoid quoting issues
connectionString=$(get_octopusvariable "MyApp.ConnectionString")
echo "Connection string is: $connectionString"
echo "Password is: $(get_octopusvariable "MyApp.Password")"
echo "Action: ${octopus_parameters['Octopus.Action.Name']}"
echo "Missing: [$(get_octopusvariable "No.Such.Variable")]"

set_octopusvariable "TestResult" "Passed"
set_octopusvariable "Password" "correct horse battery staple" -sensitive
echo "the new password is correct horse battery staple"

echo report > report.txt
new_octopusartifact report.txt "Report.txt"
update_progress 50 "Half way"

write_verbose "Connecting to the load balancer"
write_wait "Waiting for the load balancer to drain"
write_warning "Disk is 91% full"
write_highlight "Deployed"
fail_step "Deployment failed: smoke test"
echo unreachable

# A deployment script written against Octopus's python helpers, the way its
# documentation shows them: it must run unchanged.
connectionString = get_octopusvariable("MyApp.ConnectionString")
print("Connection string is: " + connectionString)
print("Password is: " + get_octopusvariable("MyApp.Password"))
print("Action: " + octopus_parameters["Octopus.Action.Name"])
print("Missing: [%s]" % octopus_parameters.get("No.Such.Variable", ""))

set_octopusvariable("TestResult", "Passed")
set_octopusvariable("Password", "correct horse battery staple", True)
print("the new password is correct horse battery staple")

with open("report.txt", "w") as f:
    f.write("report\n")
createartifact("report.txt", "Report.txt")
updateprogress(50, "Half way")

printverbose("Connecting to the load balancer")
printwait("Waiting for the load balancer to drain")
printwarning("Disk is 91% full")
printhighlight("Deployed")
failstep("Deployment failed: smoke test")
print("unreachable")

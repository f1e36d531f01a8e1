# stevedore step helpers for bash and sh, sourced before the step's script.
# Written by stevedore-step; this file holds no secret. The functions print
# service messages through the runner ("$STEVEDORE_RUNNER" emit), which
# base64-encodes the values, so the image needs no base64 tool.

# set_variable NAME VALUE [sensitive]: an output variable of the step.
set_variable() {
	case "${3-}" in
	sensitive | Sensitive | true | True | yes)
		"$STEVEDORE_RUNNER" emit setVariable "name=${1-}" "value=${2-}" sensitive=True ;;
	*)
		"$STEVEDORE_RUNNER" emit setVariable "name=${1-}" "value=${2-}" ;;
	esac
}

# get_variable NAME: prints a step variable's value (by its original name,
# "Octopus.Action.Name"); fails for an unknown name.
get_variable() {
	"$STEVEDORE_RUNNER" get-variable "${1-}"
}

# new_artifact PATH [NAME]: collect a file as an artifact of the step.
new_artifact() {
	case "${1-}" in
	/*) set -- "$1" "${2-}" ;;
	*) set -- "$PWD/${1-}" "${2-}" ;;
	esac
	if [ -n "$2" ]; then
		"$STEVEDORE_RUNNER" emit createArtifact "path=$1" "name=$2"
	else
		"$STEVEDORE_RUNNER" emit createArtifact "path=$1"
	fi
}

# mask VALUE: replace VALUE with ******** in the rest of the log.
mask() {
	"$STEVEDORE_RUNNER" emit mask "value=${1-}"
}

# fail_step [MESSAGE]: fail the step, with MESSAGE as its reason: exits 1.
# Octopus's own (Octopus's message, resultMessage, sent only for a message).
fail_step() {
	if [ -n "${1-}" ]; then
		"$STEVEDORE_RUNNER" emit --octopus resultMessage "message=$1"
	fi
	exit 1
}

# set_progress PERCENT [MESSAGE]: report the step's progress.
set_progress() {
	if [ -n "${2-}" ]; then
		"$STEVEDORE_RUNNER" emit progress "percentage=${1-}" "message=$2"
	else
		"$STEVEDORE_RUNNER" emit progress "percentage=${1-}"
	fi
}

# Octopus's helpers, as its bash bootstrap defines them: same names,
# arguments and service messages ("##octopus[...]", values base64).

# get_octopusvariable NAME: prints a step variable's value (by its Octopus
# name), or an empty line for an unknown name.
get_octopusvariable() {
	"$STEVEDORE_RUNNER" get-variable --octopus "${1-}"
}

# set_octopusvariable NAME VALUE [-sensitive]: an output variable of the
# step. An empty name or value is left out of the message, as Octopus does.
set_octopusvariable() {
	__stevedore_name=${1-}
	__stevedore_value=${2-}
	__stevedore_sensitive=${3-}
	set --
	if [ -n "$__stevedore_name" ]; then
		set -- "name=$__stevedore_name"
	fi
	if [ -n "$__stevedore_value" ]; then
		set -- "$@" "value=$__stevedore_value"
	fi
	if [ "$__stevedore_sensitive" = "-sensitive" ]; then
		set -- "$@" sensitive=True
	fi
	unset __stevedore_name __stevedore_value __stevedore_sensitive
	"$STEVEDORE_RUNNER" emit --octopus setVariable "$@"
}

# new_octopusartifact PATH [NAME]: collect a file as an artifact of the step;
# the script exits 1 when there is no such file. The message holds the
# absolute path, so that a cd before the call is honoured.
new_octopusartifact() {
	printf 'Collecting %s as an artifact...\n' "${1-}"
	if [ ! -e "${1-}" ]; then
		printf '"%s" does not exist.\n' "${1-}" >&2
		exit 1
	fi
	__stevedore_len=$(wc -c <"$1" 2>/dev/null) || __stevedore_len=0
	__stevedore_name=${2-}
	if [ -z "$__stevedore_name" ]; then
		__stevedore_name=${1%/}
		__stevedore_name=${__stevedore_name##*/}
	fi
	case "$1" in
	/*) __stevedore_path=$1 ;;
	*) __stevedore_path=$PWD/$1 ;;
	esac
	printf '##octopus[stdout-verbose]\nArtifact %s will be collected from %s after this step completes\n##octopus[stdout-default]\n' "$__stevedore_name" "$1"
	"$STEVEDORE_RUNNER" emit --octopus createArtifact "path=$__stevedore_path" "name=$__stevedore_name" "length=$((__stevedore_len + 0))"
	unset __stevedore_len __stevedore_name __stevedore_path
}

# update_progress PERCENT [MESSAGE]: report the step's progress.
update_progress() {
	"$STEVEDORE_RUNNER" emit --octopus progress "percentage=${1-}" "message=${2-}"
}

# write_verbose, write_highlight, write_wait, write_warning MESSAGE: MESSAGE
# at that level, between Octopus's level switches, in one write.
write_verbose() {
	printf '##octopus[stdout-verbose]\n%s\n##octopus[stdout-default]\n' "${1-}"
}

write_highlight() {
	printf '##octopus[stdout-highlight]\n%s\n##octopus[stdout-default]\n' "${1-}"
}

write_wait() {
	printf '##octopus[stdout-wait]\n%s\n##octopus[stdout-default]\n' "${1-}"
}

write_warning() {
	printf '##octopus[stdout-warning]\n%s\n##octopus[stdout-default]\n' "${1-}"
}

# bash gets octopus_parameters, and a get_octopusvariable that reads it.
if [ -n "${BASH_VERSION-}" ]; then
	. "$STEVEDORE_STEP_DIR/.runner/helpers.bash"
fi

# bash sources this file through BASH_ENV: the script's own child shells
# must not.
if [ -n "${BASH_ENV-}" ]; then
	unset BASH_ENV
fi

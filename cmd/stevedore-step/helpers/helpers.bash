# stevedore step helpers that only bash has, sourced by helpers.sh. Written
# by stevedore-step; this file holds no secret: the values come from the
# memfd the runner passes as STEVEDORE_PARAMETERS_FD.

# octopus_parameters: every step variable by its Octopus name, as Octopus
# declares it for bash 4.2 and later (declare -g).
if [ -n "${STEVEDORE_PARAMETERS_FD-}" ]; then
	if ((BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 2))); then
		case "$STEVEDORE_PARAMETERS_FD" in
		*[!0-9]*) ;;
		*)
			. "/proc/self/fd/$STEVEDORE_PARAMETERS_FD" && __stevedore_parameters=1
			# The script's children have no use for it.
			eval "exec $STEVEDORE_PARAMETERS_FD<&-"
			;;
		esac
	else
		echo "Bash version 4.2 or later is required to use octopus_parameters"
	fi
	unset STEVEDORE_PARAMETERS_FD
fi

# get_octopusvariable NAME: from octopus_parameters, without a fork: the
# value as it is, or an empty line for an unknown name. (A flag rather than
# declare -p, which would print every value to find out.)
if [ -n "${__stevedore_parameters-}" ]; then
	unset __stevedore_parameters
	get_octopusvariable() {
		if [ -n "${1-}" ] && [ -n "${octopus_parameters[$1]+set}" ]; then
			printf '%s' "${octopus_parameters[$1]}"
		else
			echo ""
		fi
	}
fi

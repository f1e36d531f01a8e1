package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	pb "stevedore/proto/stevedore/v1"
)

func newPrepullCommand() *cobra.Command {
	var stateDir, addr, thumbprint, feed, user, password, pull, platform string
	cmd := &cobra.Command{
		Use:   "prepull IMAGE...",
		Short: "Have an agent pull images now, ahead of the steps that use them",
		Long: `Asks the agent at --agent to pull the images now (policy always unless
--pull says otherwise), streaming its progress to stderr. Prints one line per
image to stdout: the image, "ready" and its image ID and digest, or "failed"
and why. Exits 1 if any image failed.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, images []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			policy, ok := map[string]pb.PullPolicy{"": pb.PullPolicy_PULL_POLICY_UNSPECIFIED, "always": pb.PullPolicy_PULL_POLICY_ALWAYS,
				"if-not-present": pb.PullPolicy_PULL_POLICY_IF_NOT_PRESENT, "never": pb.PullPolicy_PULL_POLICY_NEVER}[pull]
			if !ok {
				return fmt.Errorf("--pull %q: want always, if-not-present or never", pull)
			}
			client, closeConn, err := dialAgent(ctx, stateDir, addr, thumbprint)
			if err != nil {
				return err
			}
			defer closeConn()
			req := &pb.PrePullRequest{}
			for _, img := range images {
				c := &pb.ContainerExecution{Image: img, Feed: feed, PullPolicy: policy, Platform: platform}
				if user != "" || password != "" {
					c.Credentials = &pb.RegistryCredentials{Username: user, Password: password}
				}
				req.Images = append(req.Images, c)
			}
			stream, err := client.PrePull(ctx, req)
			if err != nil {
				return err
			}
			failed := 0
			for {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				if !msg.GetDone() {
					fmt.Fprintln(cmd.ErrOrStderr(), msg.GetStatus())
					continue
				}
				if msg.GetError() != "" {
					failed++
					fmt.Fprintf(cmd.OutOrStdout(), "%s failed: %s\n", msg.GetImage(), msg.GetError())
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s ready %s %s\n", msg.GetImage(), msg.GetImageId(), msg.GetDigest())
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d images failed", failed, len(images))
			}
			return nil
		},
	}
	stateDirFlag(cmd, &stateDir)
	f := cmd.Flags()
	f.StringVar(&addr, "agent", "127.0.0.1:10933", "the agent's address")
	f.StringVar(&thumbprint, "agent-thumbprint", "", "the agent's certificate thumbprint (required)")
	f.StringVar(&feed, "feed", "", "a feed configured on the agent, for the credentials")
	f.StringVar(&user, "registry-user", "", "registry user")
	f.StringVar(&password, "registry-password", envOr("STEVEDORE_REGISTRY_PASSWORD", ""), "registry password (env STEVEDORE_REGISTRY_PASSWORD)")
	f.StringVar(&pull, "pull", "", "always (default), if-not-present or never")
	f.StringVar(&platform, "platform", "", "os/arch[/variant]")
	_ = cmd.MarkFlagRequired("agent-thumbprint")
	return cmd
}

package agent_test

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	pb "stevedore/proto/stevedore/v1"
)

// oldContract is agent.proto as it was before LogLine.level: today's
// descriptor without that field and its enum.
func oldContract(t *testing.T) protoreflect.FileDescriptor {
	t.Helper()
	fd := protodesc.ToFileDescriptorProto(pb.File_proto_stevedore_v1_agent_proto)
	found := false
	for _, m := range fd.MessageType {
		if m.GetName() != "LogLine" {
			continue
		}
		for i, f := range m.Field {
			if f.GetName() == "level" {
				m.Field = append(m.Field[:i], m.Field[i+1:]...)
				found = true
				break
			}
		}
	}
	for i, e := range fd.EnumType {
		if e.GetName() == "LogLevel" {
			fd.EnumType = append(fd.EnumType[:i], fd.EnumType[i+1:]...)
			break
		}
	}
	if !found {
		t.Fatal("LogLine has no field named level")
	}
	old, err := protodesc.NewFile(fd, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	return old
}

// TestOldPeerGetsEveryLine: a StepStatus whose lines have levels, decoded
// by a peer built from the contract before levels existed, has every line
// with its sequence, source, text and partial flag; the level is an unknown
// field it ignores and passes on intact when it re-encodes the message.
func TestOldPeerGetsEveryLine(t *testing.T) {
	levels := []pb.LogLevel{pb.LogLevel_LOG_LEVEL_UNSPECIFIED, pb.LogLevel_LOG_LEVEL_VERBOSE, pb.LogLevel_LOG_LEVEL_HIGHLIGHT,
		pb.LogLevel_LOG_LEVEL_WAIT, pb.LogLevel_LOG_LEVEL_WARNING, pb.LogLevel_LOG_LEVEL_ERROR}
	st := &pb.StepStatus{Ticket: "t1", NextSequence: uint64(len(levels) + 1)}
	for i, l := range levels {
		st.Lines = append(st.Lines, &pb.LogLine{Sequence: uint64(i + 1), Source: pb.LogSource_LOG_SOURCE_STDOUT,
			Text: []byte(l.String()), Partial: i%2 == 0, Level: l})
	}
	wire, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}

	oldStatus := oldContract(t).Messages().ByName("StepStatus")
	if oldStatus.Fields().ByName("lines").Message().Fields().ByName("level") != nil {
		t.Fatal("the old contract still has LogLine.level")
	}
	old := dynamicpb.NewMessage(oldStatus)
	if err := proto.Unmarshal(wire, old); err != nil {
		t.Fatalf("an old peer cannot decode the status: %v", err)
	}
	lines := old.Get(oldStatus.Fields().ByName("lines")).List()
	if lines.Len() != len(levels) {
		t.Fatalf("an old peer sees %d lines, want %d", lines.Len(), len(levels))
	}
	for i := range lines.Len() {
		m := lines.Get(i).Message()
		fields := m.Descriptor().Fields()
		seq := m.Get(fields.ByName("sequence")).Uint()
		text := string(m.Get(fields.ByName("text")).Bytes())
		partial := m.Get(fields.ByName("partial")).Bool()
		if seq != uint64(i+1) || text != levels[i].String() || partial != (i%2 == 0) {
			t.Errorf("line %d as an old peer reads it: sequence %d, text %q, partial %v", i, seq, text, partial)
		}
		// A default level is not on the wire at all; any other is field 6,
		// unknown to the old peer.
		unknown := m.GetUnknown()
		if levels[i] == pb.LogLevel_LOG_LEVEL_UNSPECIFIED {
			if len(unknown) != 0 {
				t.Errorf("line %d: unknown bytes %x for the default level", i, unknown)
			}
			continue
		}
		num, typ, n := protowire.ConsumeTag(unknown)
		if n < 0 || num != 6 || typ != protowire.VarintType {
			t.Errorf("line %d: unknown bytes %x, want field 6", i, unknown)
		}
	}

	// What the old peer passes on still carries the levels.
	again, err := proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	var back pb.StepStatus
	if err := proto.Unmarshal(again, &back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&back, st) {
		t.Fatalf("after an old peer: %v, want %v", &back, st)
	}
}

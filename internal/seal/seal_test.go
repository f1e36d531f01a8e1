package seal

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	for _, size := range []int{16, 32} {
		key := bytes.Repeat([]byte{7}, size)
		box, err := New(key)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := box.Seal([]byte("secret"))
		b, _ := box.Seal([]byte("secret"))
		if bytes.Equal(a, b) || bytes.Contains(a, []byte("secret")) {
			t.Fatalf("sealing must be randomised and hide the value: %x %x", a, b)
		}
		plain, err := box.Open(a)
		if err != nil || string(plain) != "secret" {
			t.Fatalf("open: %q %v", plain, err)
		}
		other, _ := New(bytes.Repeat([]byte{8}, size))
		if _, err := other.Open(a); !errors.Is(err, ErrOpen) {
			t.Errorf("wrong key: %v", err)
		}
		a[len(a)-1] ^= 1
		if _, err := box.Open(a); !errors.Is(err, ErrOpen) {
			t.Errorf("altered value: %v", err)
		}
		if _, err := box.Open([]byte{1, 2}); !errors.Is(err, ErrOpen) {
			t.Errorf("short value: %v", err)
		}
	}
}

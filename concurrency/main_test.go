package concurrency_test

import (
	"testing"

	"github.com/batonhq/baton/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyMain(m) }

//go:build !linux

package redistest

import "syscall"

// sysProcAttr has nothing to add where the kernel cannot tie the server's
// life to the test binary's; cleanups still kill it.
func sysProcAttr() *syscall.SysProcAttr {
	return nil
}

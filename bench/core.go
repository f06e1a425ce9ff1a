package bench

import "context"

// runCore runs the Session/Mutex/Election workloads.
func runCore(ctx context.Context, o Options) ([]Row, error) {
	e, err := startEtcd()
	if err != nil {
		return nil, err
	}
	defer e.close()
	n := 500
	if o.Quick {
		n = 100
	}
	return floorRows(ctx, e, n)
}

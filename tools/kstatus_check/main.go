// kstatus-check: what sigs.k8s.io/cli-utils/pkg/kstatus (the library Flux and cli-utils'
// status poller use) says about one Kubernetes object. Reads the object as JSON on stdin,
// prints {"status": "InProgress|Current|Failed|...", "message": "..."} on stdout.
//
// Built from the Go module proxy into ~/.cache/workerfleet/gotools by
// tools/workerfleet_dev/gotools.py; the e2e suite runs it against live WorkerFleets.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// Unstructured's own decoder: integers stay int64, as kstatus' accessors expect.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		fail(err)
	}
	result, err := status.Compute(obj)
	if err != nil {
		fail(err)
	}
	out, err := json.Marshal(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus-check:", err)
	os.Exit(1)
}

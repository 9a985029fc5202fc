// The partner administrator's scenario, from Go, with code generated from SSPM's protos
// (README, "A Go client"): looks at a business unit's port limits, asks for a few more
// concurrent ports, follows the request on the watch stream until it is final, and lists the
// business unit's requests. SSPM's errors are printed with their google.rpc details.
//
//	export SSPM_TOKEN=$(cargo run -q -- token percy@classics.example)
//	go run sspm.example/partneradmin --business-unit bu-league --increase 10
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sspmv1 "sspm.example/api/gen/go/sspm/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "the request service")
	token := flag.String("token", os.Getenv("SSPM_TOKEN"), "bearer token (or SSPM_TOKEN)")
	cacert := flag.String("cacert", "", "CA certificate (PEM) of a TLS deployment; plaintext without")
	bu := flag.String("business-unit", "bu-league", "the business unit")
	increase := flag.Int("increase", 10, "more concurrent ports to ask for")
	requestID := flag.String("request-id", fmt.Sprintf("go-%d", time.Now().UnixNano()), "the request's id")
	flag.Parse()
	if *token == "" {
		fmt.Fprintln(os.Stderr, "error: no token: pass --token or set SSPM_TOKEN")
		os.Exit(2)
	}
	os.Exit(run(*target, *token, *cacert, *bu, int32(*increase), *requestID))
}

func run(target, token, cacert, bu string, increase int32, requestID string) int {
	security := grpc.WithInsecure()
	if cacert != "" {
		creds, err := credentials.NewClientTLSFromFile(cacert, "")
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			return 2
		}
		security = grpc.WithTransportCredentials(creds)
	}
	conn, err := grpc.Dial(target, security)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 2
	}
	defer conn.Close()
	client := sspmv1.NewPortRequestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)

	limits, err := client.GetPortLimits(ctx, &sspmv1.GetPortLimitsRequest{BusinessUnitId: bu})
	if err != nil {
		return report(err)
	}
	l := limits.GetLimits()
	fmt.Printf("limits of %s: concurrent %d, outbound %d, agentless %d\n", bu, l.GetConcurrent(), l.GetOutbound(), l.GetAgentless())

	target32 := l.GetConcurrent() + increase
	created, err := client.CreatePortChangeRequest(ctx, &sspmv1.CreatePortChangeRequestRequest{
		RequestId:      requestID,
		BusinessUnitId: bu,
		Targets:        &sspmv1.PortTargets{Concurrent: &target32},
		Justification:  "More agents for the season (Go client).",
	})
	if err != nil {
		return report(err)
	}
	fmt.Printf("created %s: %s, case %s\n", requestID, created.GetOutcome(), created.GetRequest().GetCaseNumber())

	watch, err := client.WatchPortChangeRequest(ctx, &sspmv1.WatchPortChangeRequestRequest{RequestId: requestID})
	if err != nil {
		return report(err)
	}
	for {
		update, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return report(err)
		}
		state := update.GetRequest().GetState()
		fmt.Printf("watch: %s\n", state)
		if final(state) {
			break
		}
	}

	got, err := client.GetPortChangeRequest(ctx, &sspmv1.GetPortChangeRequestRequest{RequestId: requestID})
	if err != nil {
		return report(err)
	}
	r := got.GetRequest()
	fmt.Printf("final: %s, limits after: concurrent %d\n", r.GetState(), r.GetLimitsAfter().GetConcurrent())

	list, err := client.ListPortChangeRequests(ctx, &sspmv1.ListPortChangeRequestsRequest{BusinessUnitId: bu, PageSize: 5})
	if err != nil {
		return report(err)
	}
	for _, item := range list.GetRequests() {
		fmt.Printf("listed: %s %s case %s\n", item.GetRequestId(), item.GetState(), item.GetCaseNumber())
	}
	return 0
}

func final(s sspmv1.PortChangeRequestState) bool {
	switch s {
	case sspmv1.PortChangeRequestState_PORT_CHANGE_REQUEST_STATE_APPROVED,
		sspmv1.PortChangeRequestState_PORT_CHANGE_REQUEST_STATE_REJECTED,
		sspmv1.PortChangeRequestState_PORT_CHANGE_REQUEST_STATE_CANCELLED,
		sspmv1.PortChangeRequestState_PORT_CHANGE_REQUEST_STATE_FAILED,
		sspmv1.PortChangeRequestState_PORT_CHANGE_REQUEST_STATE_PENDING_INFORMATION:
		return true
	}
	return false
}

// report prints an SSPM error with the details a program can act on: the ErrorInfo reason
// and the fields a BadRequest names.
func report(err error) int {
	s := status.Convert(err)
	fmt.Fprintf(os.Stderr, "error: %s: %s\n", s.Code(), s.Message())
	for _, d := range s.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			fmt.Fprintf(os.Stderr, "reason: %s\n", d.GetReason())
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Fprintf(os.Stderr, "field: %s: %s\n", v.GetField(), v.GetDescription())
			}
		}
	}
	return 1
}

//! What a gateway tells its own callers when a backend request fails: anet's error
//! kinds as HTTP status codes (feature `http`) and gRPC codes (feature `tonic`).
//!
//! One mapping, so that an axum and a tonic front end in the same fleet say the
//! same thing for the same failure:
//!
//! | kind | gRPC code | HTTP status | why |
//! |---|---|---|---|
//! | `Timeout` | `DEADLINE_EXCEEDED` | 504 Gateway Timeout | the backend did not answer in time |
//! | `ConnectionLost` | `UNAVAILABLE` | 502 Bad Gateway | the backend connection failed mid-request |
//! | `NotSent` | `UNAVAILABLE` | 503 Service Unavailable | never written; the caller may retry |
//! | `Connect` | `UNAVAILABLE` | 502 Bad Gateway | the backend could not be reached |
//! | `Protocol` | `INTERNAL` | 502 Bad Gateway | the backend broke the wire protocol |
//! | `Overloaded` | `RESOURCE_EXHAUSTED` | 429 Too Many Requests | a limit shed the request |
//! | `Unavailable` | `UNAVAILABLE` | 503 Service Unavailable | no backend could take it |
//! | `Closed` | `UNAVAILABLE` | 503 Service Unavailable | the client is shutting down |
//! | `InvalidRequest` | `INVALID_ARGUMENT` | 400 Bad Request | e.g. a payload over the maximum frame |
//! | `InvalidConfig` | `INTERNAL` | 500 Internal Server Error | the gateway's own settings are wrong |
//! | `Other` | `UNKNOWN` | 500 Internal Server Error | a failure of no known kind |
//!
//! The gRPC codes follow their documented meanings (`UNAVAILABLE` is the code
//! gRPC clients retry); the HTTP statuses follow gRPC's own HTTP mapping, except
//! that a backend that failed, could not be reached or broke the protocol is a
//! 502, as a reverse proxy reports a bad upstream.
//!
//! ```
//! # #[cfg(all(feature = "http", feature = "tonic"))] {
//! use anet::{Error, Kind};
//!
//! let err = Error::new(Kind::Timeout);
//! assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
//! let status = tonic::Status::from(err);
//! assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
//! # }
//! ```

use crate::{Error, Kind};

#[cfg(feature = "http")]
impl Kind {
    /// The HTTP status a gateway answers with for a failure of this kind (see
    /// the table in the module docs).
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Kind::Timeout => S::GATEWAY_TIMEOUT,
            Kind::ConnectionLost | Kind::Connect | Kind::Protocol => S::BAD_GATEWAY,
            Kind::NotSent | Kind::Unavailable | Kind::Closed => S::SERVICE_UNAVAILABLE,
            Kind::Overloaded => S::TOO_MANY_REQUESTS,
            Kind::InvalidRequest => S::BAD_REQUEST,
            Kind::InvalidConfig | Kind::Other => S::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(feature = "http")]
impl Error {
    /// The HTTP status for this error's kind: [`Kind::http_status`].
    pub fn http_status(&self) -> http::StatusCode {
        self.kind().http_status()
    }
}

#[cfg(feature = "tonic")]
impl Kind {
    /// The gRPC code a gateway answers with for a failure of this kind (see the
    /// table in the module docs).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            Kind::Timeout => C::DeadlineExceeded,
            Kind::ConnectionLost
            | Kind::NotSent
            | Kind::Connect
            | Kind::Unavailable
            | Kind::Closed => C::Unavailable,
            Kind::Protocol | Kind::InvalidConfig => C::Internal,
            Kind::Overloaded => C::ResourceExhausted,
            Kind::InvalidRequest => C::InvalidArgument,
            Kind::Other => C::Unknown,
        }
    }
}

#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    /// The status of [`Kind::grpc_code`]; its message is the error and its
    /// chain of sources (`"no endpoint available: no endpoint is up"`).
    fn from(err: Error) -> tonic::Status {
        let mut message = err.to_string();
        let sources = std::iter::successors(std::error::Error::source(&err), |e| e.source());
        for cause in sources {
            message.push_str(": ");
            message.push_str(&cause.to_string());
        }
        tonic::Status::new(err.kind().grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)]
    use crate::{Error, Kind};

    #[cfg(feature = "http")]
    #[test]
    fn every_kind_has_the_documented_http_status() {
        let expected = [
            (Kind::Timeout, 504),
            (Kind::ConnectionLost, 502),
            (Kind::NotSent, 503),
            (Kind::Connect, 502),
            (Kind::Protocol, 502),
            (Kind::Overloaded, 429),
            (Kind::Unavailable, 503),
            (Kind::Closed, 503),
            (Kind::InvalidRequest, 400),
            (Kind::InvalidConfig, 500),
            (Kind::Other, 500),
        ];
        assert_eq!(expected.len(), Kind::all().len(), "a kind is missing here");
        for (kind, status) in expected {
            assert_eq!(kind.http_status().as_u16(), status, "{kind}");
            assert_eq!(Error::new(kind).http_status().as_u16(), status, "{kind}");
        }
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn every_kind_has_the_documented_grpc_code() {
        use tonic::Code as C;
        let expected = [
            (Kind::Timeout, C::DeadlineExceeded),
            (Kind::ConnectionLost, C::Unavailable),
            (Kind::NotSent, C::Unavailable),
            (Kind::Connect, C::Unavailable),
            (Kind::Protocol, C::Internal),
            (Kind::Overloaded, C::ResourceExhausted),
            (Kind::Unavailable, C::Unavailable),
            (Kind::Closed, C::Unavailable),
            (Kind::InvalidRequest, C::InvalidArgument),
            (Kind::InvalidConfig, C::Internal),
            (Kind::Other, C::Unknown),
        ];
        assert_eq!(expected.len(), Kind::all().len(), "a kind is missing here");
        for (kind, code) in expected {
            assert_eq!(kind.grpc_code(), code, "{kind}");
            assert_eq!(tonic::Status::from(Error::new(kind)).code(), code, "{kind}");
        }
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn the_status_message_names_the_kind_and_the_cause() {
        let err = Error::with_source(Kind::Unavailable, "no endpoint is up");
        let status = tonic::Status::from(err);
        assert_eq!(status.message(), "no endpoint available: no endpoint is up");
    }
}

// A rate is a count per second, minute or hour.

#[castor_abi::task(thread, rate = "ten")]
pub fn send_email(to: String) {
    let _ = to;
}

fn main() {}

// A borrow inside another type is a borrow too.

#[castor_abi::task(thread)]
pub fn total(chunks: Vec<&[u8]>) -> usize {
    chunks.iter().map(|c| c.len()).sum()
}

fn main() {}
